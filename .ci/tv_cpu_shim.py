"""Let a CUDA-built torchvision wheel import against a CPU-only torch.

torchvision's compiled ops (_C.so) link libtorch_cuda and fail to load against
torch+cpu; torchvision tolerates that (extension._has_ops() -> False) except that
_meta_registrations.py registers fake kernels for torchvision::nms / ::qnms
unconditionally, which raises "operator torchvision::nms does not exist".
This hook defines those two op schemas (no kernels) right before torchvision is
first imported, so `import torchvision` succeeds; its pure-Python parts
(transforms.v2, which transformers' video processors need) work, and the C++
ops raise torchvision's own "Couldn't load custom C++ ops" RuntimeError if used.
Installed by a one-line .pth file in site-packages: `import tv_cpu_shim`.
"""
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIB = None
_DONE = False


class _TorchvisionOpsFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        global _LIB, _DONE
        if fullname != "torchvision" or _DONE:
            return None
        _DONE = True  # run once (not removed from sys.meta_path while the import system walks it)
        try:
            import torch

            # Ops already registered (e.g. a working torchvision): nothing to do.
            try:
                torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
                return None
            except RuntimeError:
                pass
            import importlib.util

            spec = importlib.util.find_spec("torchvision")
            if spec is None or not spec.submodule_search_locations:
                return None
            import glob, os

            so = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
            if so:  # a CPU-compatible build loads here; torchvision reloading it is a no-op
                try:
                    torch.ops.load_library(so[0])
                    return None  # real ops loaded (CPU-compatible build)
                except (OSError, RuntimeError):
                    pass
            _LIB = torch.library.Library("torchvision", "FRAGMENT")
            for s in _SCHEMAS.values():
                try:
                    _LIB.define(s)
                except RuntimeError:
                    pass
        except Exception:  # never break interpreter start-up / imports
            pass
        return None


sys.meta_path.insert(0, _TorchvisionOpsFinder)
