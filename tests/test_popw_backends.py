"""Backend choice: torch on CUDA, else cupy on CUDA, else numpy; a broken GPU stack
falls back to numpy instead of crashing."""

from types import SimpleNamespace

from node.popw import backends


def fake_torch(available):
    def is_available():
        if isinstance(available, Exception):
            raise available
        return available

    matmul = SimpleNamespace(allow_tf32=False)
    return SimpleNamespace(
        cuda=SimpleNamespace(is_available=is_available, get_device_name=lambda dev: "NVIDIA L4"),
        backends=SimpleNamespace(cuda=SimpleNamespace(matmul=matmul)),
        device=lambda name: SimpleNamespace(type=name),
    )


def fake_cupy(count):
    def get_count():
        if isinstance(count, Exception):
            raise count
        return count

    runtime = SimpleNamespace(
        getDeviceCount=get_count, getDeviceProperties=lambda i: {"name": b"NVIDIA T4"}
    )
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime))


def choose(monkeypatch, torch=None, cupy=None):
    mods = {"torch": torch, "cupy": cupy}
    monkeypatch.setattr(backends, "_optional", lambda name: mods[name])
    monkeypatch.setattr(backends, "cuda_device_present", lambda: True)
    return backends.best_backend()


def test_numpy_without_gpu_stacks(monkeypatch):
    assert choose(monkeypatch).name == "numpy"


def test_no_cuda_device_node_means_numpy_without_importing_gpu_stacks(monkeypatch):
    imported = []
    monkeypatch.setattr(backends, "_optional", lambda name: imported.append(name))
    monkeypatch.setattr(backends, "cuda_device_present", lambda: False)
    assert backends.best_backend().name == "numpy"
    assert imported == []


def test_torch_on_cuda_first_with_tf32(monkeypatch):
    torch = fake_torch(True)
    b = choose(monkeypatch, torch, fake_cupy(1))
    assert b.name == "torch" and b.device == "NVIDIA L4"
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_cupy_when_torch_has_no_cuda(monkeypatch):
    b = choose(monkeypatch, fake_torch(False), fake_cupy(1))
    assert b.name == "cupy" and b.device == "NVIDIA T4"


def test_broken_stacks_fall_back_to_numpy(monkeypatch):
    b = choose(
        monkeypatch,
        fake_torch(RuntimeError("driver too old")),
        fake_cupy(RuntimeError("no libcuda")),
    )
    assert b.name == "numpy"
    assert choose(monkeypatch, fake_torch(False), fake_cupy(0)).name == "numpy"
