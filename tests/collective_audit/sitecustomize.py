"""Collective-device audit, loaded into every rank of a launch when this folder is on PYTHONPATH
and RFT_DS_AUDIT_COLLECTIVES=1 (tests/test_cluster_correctness.py).

NCCL reduces accelerator tensors only; gloo takes CPU tensors, so on a CPU machine a tensor that
would crash a GPU run passes unnoticed. This audit makes the mistake visible here: a tensor made by
a factory (torch.tensor, zeros, ...) without an explicit `device=` is *implicit* (on a GPU rank it
would be on the CPU), and so is anything computed from it, until it is moved with `.to(device)`.
A collective called from rft-ds code with an implicit tensor raises, naming the call site.
Collectives called by DeepSpeed or torch themselves are not audited (their device handling is theirs)."""

import os

if os.environ.get("RFT_DS_AUDIT_COLLECTIVES") == "1":
    import sys

    import torch
    import torch.distributed as tdist
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.weak import WeakIdKeyDictionary

    _implicit = WeakIdKeyDictionary()
    _FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand,
                  torch.randn, torch.randint, torch.as_tensor, torch.linspace, torch.eye}
    _MOVES = {torch.Tensor.to, torch.Tensor.cuda}
    _ROOT = os.sep + "rft_ds" + os.sep

    def _tensors(x):
        return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]

    class _Audit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in _FACTORIES:
                taint = kwargs.get("device") is None
            elif func in _MOVES:
                # .to(device) / .to(other_tensor) / .cuda() choose the device explicitly; .to(dtype) does not.
                # On CPU a move to the CPU returns the same object, so an explicit move clears the mark.
                explicit = func is torch.Tensor.cuda or "device" in kwargs or any(
                    isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])
                if explicit:
                    for t in _tensors(out):
                        _implicit.pop(t, None)
                    return out
                taint = any(t in _implicit for t in _tensors((args, kwargs)))
            else:
                taint = any(t in _implicit for t in _tensors((args, kwargs)))
            if taint:
                for t in _tensors(out):
                    _implicit[t] = True
            return out

    def _caller_in_rft_ds() -> str | None:
        """The rft-ds frames on the stack (innermost first), if the collective's caller is rft-ds code."""
        f = sys._getframe(2)
        while f is not None and (os.sep + "torch" + os.sep) in f.f_code.co_filename:
            f = f.f_back
        if f is None or _ROOT not in f.f_code.co_filename:
            return None
        sites = []
        while f is not None:
            if _ROOT in f.f_code.co_filename:
                sites.append(f"{f.f_code.co_filename.split(_ROOT)[-1]}:{f.f_lineno}")
            f = f.f_back
        return " <- ".join(sites)

    def _wrap(name):
        fn = getattr(tdist, name)

        def audited(*args, **kwargs):
            where = _caller_in_rft_ds()
            if where is not None:
                bad = [t for t in _tensors((args, kwargs)) if t in _implicit]
                if bad:
                    raise RuntimeError(f"collective audit: torch.distributed.{name} called at {where} with a tensor "
                                       "created without device= (on a GPU rank it is a CPU tensor, which NCCL "
                                       "rejects)")
            return fn(*args, **kwargs)

        setattr(tdist, name, audited)

    for _name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                  "reduce", "all_to_all_single", "gather", "scatter"):
        _wrap(_name)
    _Audit().__enter__()
    if "RANK" in os.environ:
        print(f"[collective audit on, rank {os.environ['RANK']}]", file=sys.stderr, flush=True)
