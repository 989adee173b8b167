"""`detcli SUBCOMMAND [hydra overrides]`: dispatch to a Hydra app per subcommand. No training logic here."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import sys

from detcli import __version__
from detcli.config import config_dir

COMMANDS = {
    "train": "train a detector: detcli train head=fcos backbone=resnet50 data=coco data.train_ann=...",
    "eval": "COCO metrics of a checkpoint on its (or another) val set: detcli eval checkpoint=PATH",
    "predict": "detect objects in images: detcli predict checkpoint=PATH source=IMAGE|DIR|GLOB",
    "export": "ONNX / TorchScript with NMS, checked against PyTorch: detcli export checkpoint=PATH format=onnx",
    "data": "check a dataset or draw samples: detcli data check data=voc data.root=... | detcli data show n=16",
    "bench": "inference (eager, compiled, onnxruntime) and training speed here: detcli bench checkpoint=PATH",
    "backbones": "timm backbones, levels as stride:channels: detcli backbones 'resnet*' [--pretrained]",
    "compare": "finished runs side by side (config diff, metrics, curves): detcli compare RUN RUN... | SWEEP_DIR",
}
DATA_ACTIONS = ("check", "show")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"detcli {__version__}: config-driven object detection in plain PyTorch", "",
             "usage: detcli SUBCOMMAND [key=value ...] [-m] [--cfg job] [--help]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "`detcli SUBCOMMAND --help` lists the config groups and keys of a subcommand."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"detcli {__version__}")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "backbones":  # a glob and a flag, not a Hydra app
        from detcli.tasks.backbones import main as backbones

        return backbones(rest)
    if cmd == "compare":  # folders and a flag, not a Hydra app
        from detcli.tasks.compare import main as compare

        return compare(rest)
    if cmd == "data":
        if not rest or rest[0] not in DATA_ACTIONS:
            print(f"detcli data: give an action: {' | '.join(DATA_ACTIONS)} (e.g. detcli data check data=coco ...).",
                  file=sys.stderr)
            return 2
        cmd, rest = f"data_{rest[0]}", rest[1:]
    elif cmd not in COMMANDS:
        close = difflib.get_close_matches(cmd, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"detcli: unknown subcommand '{cmd}'.{hint} Subcommands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    error = check_overrides(cmd, rest)
    if error:
        print(error, file=sys.stderr)
        return 2
    if cmd == "train":
        rest = distributed_overrides(rest)
    return run_hydra(cmd, rest)


def distributed_overrides(rest: list[str]) -> list[str]:
    """Under torchrun: join the process group first, give every rank the same run folder, and keep
    Hydra's files and logs to rank 0."""
    from detcli.engine.distributed import init_from_env, shared_run_dir, world_size

    if world_size() == 1:
        return rest
    init_from_env()
    if not any(a.startswith("hydra.run.dir=") for a in rest):
        rest = [*rest, f"hydra.run.dir={shared_run_dir()}"]
    if int(os.environ.get("RANK", "0")) > 0:
        rest = [*rest, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return rest


def run_hydra(cmd: str, rest: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from detcli import sweeps
    from detcli.errors import DetcliError

    task = importlib.import_module(f"detcli.tasks.{cmd}")

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=cmd)
    def _run(cfg):
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return _sweep_job(cmd, task, cfg)
        try:
            return task.run(cfg)
        except DetcliError as e:
            print(f"detcli {cmd}: error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    sys.argv = [f"detcli {cmd}", *rest]
    sweeps.last_sweep_failures = 0
    _run()
    return 1 if sweeps.last_sweep_failures else 0


def _sweep_job(cmd: str, task, cfg):
    """One job of a sweep: a failure is reported and recorded (a failed row of summary.csv), and the
    sweeper gets None (a failed optuna trial) instead of an exception that would end the whole sweep."""
    from hydra.core.hydra_config import HydraConfig

    from detcli import sweeps
    from detcli.errors import DetcliError

    out = HydraConfig.get().runtime.output_dir
    try:
        return task.run(cfg)
    except Exception as e:  # any job's failure is reported, and the sweep goes on
        job = HydraConfig.get().job.num
        if isinstance(e, DetcliError):
            print(f"detcli {cmd}: job {job} error: {e}", file=sys.stderr)
        else:  # not a user error: the traceback goes to the job's log
            logging.getLogger("detcli").exception("job %s failed", job)
        sweeps.job_failed(out, e)
        return None


def check_overrides(cmd: str, args: list[str]) -> str | None:
    """Compose the config once with the command line's overrides (sweeps reduced to their first value)
    and explain what does not fit, naming the key and the closest valid one. None when all is well."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    ns, _ = get_args_parser().parse_known_args(args)
    if ns.help or ns.hydra_help or ns.config_dir or ns.config_path or ns.config_name or ns.shell_completion:
        return None  # Hydra's own handling (and user config folders Hydra will add)
    try:
        parsed = OverridesParser.create().parse_overrides(ns.overrides)
    except HydraException as e:
        return f"detcli {cmd}: cannot parse the overrides: {e}"
    for o in parsed:
        missing = _missing_plugin(f"{o.get_key_element().lstrip('+~')}/{o.input_line.split('=', 1)[-1]}")
        if missing:
            return f"detcli {cmd}: {missing}"
    overrides = [_first_value(o) for o in parsed if _checkable(o)]
    if cmd == "eval":  # eval's data keys apply over the checkpoint's data config, whatever its format
        overrides = [o for o in overrides if not o.lstrip("+~").startswith("data.")]
    try:
        _compose(cmd, overrides)
    except HydraException as e:
        return _explain(cmd, e, overrides)
    return None


# Hydra plugins behind detcli's extras: the config they provide -> (their module, the extra)
PLUGINS = {"hydra/sweeper/optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
           "hydra/launcher/submitit_": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def _missing_plugin(config: str) -> str | None:
    """What to install when `config` (e.g. hydra/launcher/submitit_slurm) comes from a plugin that is absent."""
    from importlib.util import find_spec

    def installed(module: str) -> bool:
        try:
            return find_spec(module) is not None
        except ModuleNotFoundError:  # no package `hydra_plugins` at all: no plugin is installed
            return False

    for prefix, (module, extra) in PLUGINS.items():
        if config.startswith(prefix) and not installed(module):
            return (f"the config '{config}' comes from the Hydra plugin {module.split('.')[-1].replace('_', '-')}, "
                    f"which is not installed: pip install detcli[{extra}].")
    return None


def _checkable(o) -> bool:
    key = o.get_key_element().lstrip("+~")
    return not key.startswith("hydra") or key.startswith("hydra.searchpath")


def _first_value(o) -> str:
    from hydra.core.override_parser.types import ValueType

    if o.value_type == ValueType.INTERVAL_SWEEP:  # an optuna search range: its lower end stands for it
        return f"{o.get_key_element()}={o.value().start}"
    if o.is_sweep_override():
        return f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
    return o.input_line


def _compose(cmd: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=cmd, overrides=overrides)


def _explain(cmd: str, error: Exception, overrides: list[str]) -> str:
    from hydra.errors import MissingConfigException

    text = " ".join(str(e).strip() for e in (error, error.__cause__) if e is not None and str(e).strip())
    missing = isinstance(error, MissingConfigException) and _missing_plugin(error.missing_cfg_file or "")
    if missing:
        return f"detcli {cmd}: {missing}"
    if isinstance(error, MissingConfigException) and error.options:
        group = error.missing_cfg_file.rsplit("/", 1)
        close = difflib.get_close_matches(group[-1], error.options, n=1)
        hint = f" Did you mean '{group[0]}={close[0]}'?" if close and len(group) == 2 else ""
        return (f"detcli {cmd}: there is no config '{error.missing_cfg_file}'.{hint} "
                f"Available: {', '.join(sorted(error.options))}.")
    match = re.search(r"Could not override '([^']+)'", text)
    if match:
        key = match.group(1)
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            keys = _flat_keys(_compose(cmd, rest))
        except Exception:  # noqa: BLE001 - without the other overrides we still report the key
            keys = []
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (f"detcli {cmd}: '{key}' is not a config key.{hint} `detcli {cmd} --cfg job` prints every key; "
                f"to add a new one on purpose, write '+{key}=...'.")
    return f"detcli {cmd}: the config cannot be composed: {text}"


def _flat_keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in cfg:
        full = f"{prefix}{k}"
        keys.append(full)
        node = cfg._get_node(k)
        if isinstance(node, DictConfig):
            keys += _flat_keys(node, full + ".")
    return keys
