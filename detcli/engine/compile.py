"""trainer.compile: torch.compile where it works, the eager module (with one warning) where it does not."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile where it works; the eager module, with a warning, where it does not."""
    return _CompileOrEager(module)


class _CompileOrEager(nn.Module):
    """Runs the torch.compile'd module; on a compile failure (which shows at the first call) warns once
    and runs the eager module from then on."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, dynamic=True)
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any backend failure means eager
                self.failed = True
                log.warning("trainer.compile=true: torch.compile failed (%s: %s); training eagerly",
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return self.module(*args, **kwargs)
