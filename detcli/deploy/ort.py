"""The one place detcli opens an onnxruntime session (export's check, `predict.backend=onnx`, `detcli bench`,
scripts/bench_*.py), so that every graph runs with the same options:

- graph optimisation ORT_ENABLE_ALL: constant folding, Conv + BatchNorm / activation fusion and the
  blocked NCHWc layout of the CPU convolutions (and, for an int8 graph, DequantizeLinear -> op ->
  QuantizeLinear folded into QLinearConv and friends);
- intra-op threads = torch's thread count (one per usable core unless `torch.set_num_threads` /
  `bench.threads` says otherwise), so that onnxruntime and eager PyTorch are measured on the same cores;
  sequential execution with one inter-op thread: the graph is a chain, parallel branches do not pay;
- `session.dynamic_block_base`: the intra-op work is handed out in shrinking blocks rather than one equal
  share per thread, so that a thread slowed by a busy core no longer holds the others up;
- no spinning: idle intra-op threads sleep instead of spinning, so that they never take the cores from
  torch's OpenMP threads (an eager run measured after a spinning session was up to 50x slower on 2 shared
  cores).
An optimised-model cache (`optimized_model_filepath`) is not used: the optimised graph (NCHWc) is tied to
the CPU it was made on, and it would only shorten the session start, never the runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPU = ("CPUExecutionProvider",)
DYNAMIC_BLOCK_BASE = "4"  # onnxruntime's suggested value: blocks of 1/(4 x threads) of the work, then smaller


def session_options(threads: int | None = None):
    """onnxruntime SessionOptions as detcli runs graphs; `threads`: intra-op threads (None: torch's count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.dynamic_block_base", DYNAMIC_BLOCK_BASE)
    return opts


def inference_session(path: str | Path, providers: tuple[str, ...] | list[str] = CPU, threads: int | None = None):
    """An onnxruntime InferenceSession of the graph at `path` with `session_options(threads)`, on the
    first of `providers` that can run each node (CPU last where a GPU provider comes first)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=list(providers))
