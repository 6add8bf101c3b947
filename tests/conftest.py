import os

import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, settings

# Deterministic in CI so a red run reproduces; HOLITOM_FULL=1 widens the sweeps.
settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("full", parent=settings.get_profile("default"), max_examples=500)
settings.load_profile("full" if os.environ.get("HOLITOM_FULL") else "default")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: Devices a ``device``-parametrised test runs on: the CPU always, CUDA where there is one (skipped otherwise,
#: so a CPU run says what it did not check).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def fresh_dynamo():
    """A clean Dynamo around a test, with scalar outputs captured (transformers' placeholder check) and
    Dynamo's other settings as they were after it (``holitom_fx.compile`` sets some)."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=False):
        yield
    torch._dynamo.reset()
