"""The fused CPU kernel against geomol's torch-only Gaunt path, and its build and fallback."""

import contextlib
import os
import shutil

import pytest
import torch

from geomol.nn import gaunt, gaunt_kernel
from geomol.nn.gaunt import GauntTensorProduct

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler: geomol uses the torch path"
)


def product_and_gradients(tp, x, y, grad, fused):
    """Output and the gradients of x, y and the three weights, through the kernel or the torch path."""
    inputs = [x.clone().requires_grad_(True), y.clone().requires_grad_(True)]
    params = [tp.weight_in1.weight, tp.weight_in2.weight, tp.weight_out.weight]
    with contextlib.nullcontext() if fused else gaunt_kernel.disabled():
        out = tp(*inputs)
    grads = torch.autograd.grad(out, inputs + params, grad)  # the backward follows the forward's path
    return out.detach(), grads


@pytest.mark.parametrize("method", ["grid", "direct"])
@pytest.mark.parametrize("channels", [3, 4])  # the channel count does / does not divide the kernel's 32-row tile
@pytest.mark.parametrize("l1,l2,l3", [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 1, 2), (1, 3, 4), (6, 6, 6), (2, 5, 1)])
def test_kernel_matches_torch_path_in_float64(l1, l2, l3, channels, method):
    """Forward and all five gradients, with grid and with direct plans; 45 nodes is not a multiple of the tile
    either (a partial last tile)."""
    g = torch.Generator().manual_seed(l1 * 100 + l2 * 10 + l3)
    tp = GauntTensorProduct(l1, l2, l3, channels=channels).double()
    for p in tp.parameters():
        p.data.uniform_(0.5, 1.5, generator=g)
    x = torch.randn(45, channels, (l1 + 1) ** 2, generator=g, dtype=torch.float64)
    y = torch.randn(45, channels, (l2 + 1) ** 2, generator=g, dtype=torch.float64)
    grad = torch.randn(45, channels, (l3 + 1) ** 2, generator=g, dtype=torch.float64)
    with gaunt_kernel.method(method):
        out, grads = product_and_gradients(tp, x, y, grad, fused=True)
    ref_out, ref_grads = product_and_gradients(tp, x, y, grad, fused=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["x", "y", "w1", "w2", "w3"], grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("channels", [5, 16])
def test_kernel_in_float32_and_with_threads(channels):
    """float32 takes the vector transposes on CPUs with AVX-512; 2,020 / 3,232 rows use two threads."""
    g = torch.Generator().manual_seed(1)
    tp = GauntTensorProduct(4, 3, 4, channels=channels)
    x = torch.randn(202, channels, 25, generator=g)
    y = torch.randn(202, channels, 16, generator=g)
    grad = torch.randn(202, channels, 25, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # per-thread partial sums of the weight gradients are added at the end
        out, grads = product_and_gradients(tp, x, y, grad, fused=True)
    finally:
        torch.set_num_threads(threads)
    ref_out, ref_grads = product_and_gradients(tp.double(), x.double(), y.double(), grad.double(), fused=False)
    torch.testing.assert_close(out, ref_out.float(), rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=2e-3)


def test_plan_groups_every_coupling_once():
    """The grouped K entries reproduce the exact φ integrals of three real Fourier modes."""
    p = gaunt_kernel.plan(3, 2, 4, 9, torch.float64)
    start, gstart = p["start"].long(), p["gstart"].long()
    rebuilt = torch.zeros(9, 7, 5, dtype=torch.float64)
    for m3 in range(9):
        for group in range(start[m3], start[m3 + 1]):
            for q in range(gstart[group], gstart[group + 1]):
                rebuilt[m3, p["m1"][q], p["m2"][q]] += p["coef"][group]
    fourier = [gaunt.SphericalGridTransform(lmax, 9).tables()["fourier"] for lmax in (3, 2, 4)]
    expected = torch.einsum("ja,jb,jc->cab", *fourier)
    expected[expected.abs() < 1e-13] = 0
    torch.testing.assert_close(rebuilt, expected, rtol=1e-12, atol=1e-14)
    assert torch.unique(p["coef"].abs().round(decimals=12)).numel() <= 2  # 1/(2√π) and 1/√(2π)


def test_direct_plan_holds_the_gaunt_coefficients_grouped():
    """A direct plan's grouped terms rebuild the bilinear map of the grid plan on basis vectors, term by term: the
    products of real spherical harmonics with l1 + l2 + l3 odd or outside the triangle inequality vanish."""
    p = gaunt_kernel.plan(2, 1, 3, 6, torch.float64, direct=True)
    assert p["n_theta"] == 0
    start, gstart = p["start"].long(), p["gstart"].long()
    rebuilt = torch.zeros(9, 4, 16, dtype=torch.float64)
    for k in range(16):
        for group in range(start[k], start[k + 1]):
            for q in range(gstart[group], gstart[group + 1]):
                rebuilt[p["m1"][group], p["m2"][q], k] += p["coef"][q]
    a, b = torch.eye(9, dtype=torch.float64).repeat_interleave(4, 0), torch.eye(4, dtype=torch.float64).repeat(9, 1)
    with gaunt_kernel.method("grid"):
        expected = gaunt_kernel.forward(a, b, (2, 1, 3), 6).view(9, 4, 16)
    torch.testing.assert_close(rebuilt, expected, rtol=1e-12, atol=1e-14)
    degree = lambda i: int(i**0.5)  # noqa: E731
    for i, j, k in rebuilt.nonzero().tolist():
        l1, l2, l3 = degree(i), degree(j), degree(k)
        assert (l1 + l2 + l3) % 2 == 0 and abs(l1 - l2) <= l3 <= l1 + l2
    assert gaunt_kernel.uses_direct(2, 2, 2) and not gaunt_kernel.uses_direct(5, 2, 2)
    with gaunt_kernel.method("direct"):
        assert gaunt_kernel.uses_direct(6, 6, 6)
    with pytest.raises(ValueError, match="method must be"):
        gaunt_kernel.method("fast").__enter__()


def test_build_is_cached_and_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMOL_CACHE", str(tmp_path))
    gaunt_kernel._library.cache_clear()
    try:
        assert gaunt_kernel.available(torch.zeros(1))
        assert len(list((tmp_path / "kernels").glob("gaunt_product_*.so"))) == 1
        gaunt_kernel._library.cache_clear()
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        with pytest.warns(RuntimeWarning, match="torch-only path"):
            assert not gaunt_kernel.available(torch.zeros(1))
        tp = GauntTensorProduct(2, 2, 2, channels=2)
        assert tp(torch.randn(3, 2, 9), torch.randn(3, 2, 9)).shape == (3, 2, 9)  # the torch path still works
        gaunt_kernel._library.cache_clear()
        monkeypatch.setenv("GEOMOL_GAUNT_KERNEL", "0")
        assert not gaunt_kernel.available(torch.zeros(1))
    finally:
        gaunt_kernel._library.cache_clear()


def test_output_weight_gradient_where_a_weight_is_zero():
    """∂L/∂w3 comes from the saved output divided by w3; an exactly zero w3 takes the recomputing branch."""
    g = torch.Generator().manual_seed(2)
    tp = GauntTensorProduct(2, 2, 3, channels=2).double()
    tp.weight_out.weight.data[1, 2] = 0.0
    x = torch.randn(40, 2, 9, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, 9, generator=g, dtype=torch.float64)
    grad = torch.randn(40, 2, 16, generator=g, dtype=torch.float64)
    _, grads = product_and_gradients(tp, x, y, grad, fused=True)
    _, ref_grads = product_and_gradients(tp, x, y, grad, fused=False)
    assert grads[4][1, 2] != 0
    torch.testing.assert_close(grads[4], ref_grads[4], rtol=1e-11, atol=1e-11)


def _cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    return set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())


@pytest.mark.parametrize("method", ["grid", "direct"])
@pytest.mark.parametrize("march", ["x86-64-v2", "x86-64-v3"])
def test_portable_build_without_avx512_agrees(march, method, tmp_path, monkeypatch):
    """CPUs without AVX-512 take 32-byte vectors and AVX2 transposes (x86-64-v3) or 16-byte vectors and scalar
    transposes (x86-64-v2): build for each and compare with the torch path."""
    if "x86_64" not in os.uname().machine:
        pytest.skip("the portable flags below are for x86-64")
    if march == "x86-64-v3" and not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU cannot run x86-64-v3 code")
    monkeypatch.setenv("GEOMOL_CACHE", str(tmp_path))
    flags = tuple(f for f in gaunt_kernel._FLAGS if not f.startswith("-march")) + (f"-march={march}",)
    library = gaunt_kernel.build(flags)
    monkeypatch.setattr(gaunt_kernel, "_library", lambda: library)
    g = torch.Generator().manual_seed(3)
    tp = GauntTensorProduct(3, 2, 3, channels=16)
    x, y = torch.randn(70, 16, 16, generator=g), torch.randn(70, 16, 9, generator=g)
    grad = torch.randn(70, 16, 16, generator=g)
    with gaunt_kernel.method(method):
        out, grads = product_and_gradients(tp, x, y, grad, fused=True)
    ref_out, ref_grads = product_and_gradients(tp, x, y, grad, fused=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-3)


def test_ops_are_registered_with_fake_and_autograd():
    """``torch.library.opcheck``: schema, fake (shape) implementation, autograd registration, AOT dispatch."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(40, 9, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scales = [(torch.rand(4, k, generator=g, dtype=torch.float64) + 0.5).requires_grad_() for k in (9, 4, 16)]
    torch.library.opcheck(torch.ops.geomol.gaunt_product.default, (a, b, [2, 1, 3], 6, *scales))
    grad = torch.randn(40, 16, generator=g, dtype=torch.float64)
    out = gaunt_kernel.forward(a.detach(), b.detach(), (2, 1, 3), 6, *scales).detach()
    arguments = (grad, a.detach(), b.detach(), out, [2, 1, 3], 6, *(s.detach() for s in scales), [True] * 5, 4)
    torch.library.opcheck(torch.ops.geomol.gaunt_product_backward.default, arguments)


def test_op_gradients_of_every_order():
    """The op's registered backward against finite differences, first and second order, scales included."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    scales = [(torch.rand(2, 9, generator=g, dtype=torch.float64) + 0.5).requires_grad_() for _ in range(3)]
    product = lambda a, b, *s: gaunt_kernel.forward(a, b, (2, 2, 2), 6, *s)  # noqa: E731
    assert torch.autograd.gradcheck(product, (a, b, *scales))
    assert torch.autograd.gradgradcheck(product, (a, b, *scales))


def test_calls_without_autograd_skip_the_op_and_agree(monkeypatch):
    """With nothing for autograd to record, ``forward``/``conv``/``backward`` run the kernel without the custom op's
    dispatch: the same numbers as through the op; with an input that needs a gradient they go through the op."""
    g = torch.Generator().manual_seed(7)
    a, b = (torch.randn(24, 9, generator=g, dtype=torch.float64) for _ in range(2))
    scales = [torch.rand(4, 9, generator=g, dtype=torch.float64) + 0.5 for _ in range(3)]
    index = torch.randint(0, 6, (6,), generator=g)
    via_op = torch.ops.geomol.gaunt_product.default(a, b, [2, 2, 2], 6, *scales)
    conv_op = torch.ops.geomol.gaunt_conv.default(a, b, [2, 2, 2], 6, *scales, 4, index, None, index, 24)
    grad = torch.randn(24, 9, generator=g, dtype=torch.float64)
    back_op = torch.ops.geomol.gaunt_product_backward.default(grad, a, b, via_op, [2, 2, 2], 6, *scales, [True] * 5, 4)
    calls = []
    for name in ("_product_op", "_conv_op", "_backward_op"):
        original = getattr(gaunt_kernel, name)
        monkeypatch.setattr(
            gaunt_kernel, name, lambda *args, original=original, name=name: calls.append(name) or original(*args)
        )
    direct = gaunt_kernel.forward(a, b, (2, 2, 2), 6, *scales)
    conv = gaunt_kernel.conv(a, b, (2, 2, 2), 6, *scales, channels=4, a_index=index, out_index=index, out_rows=24)
    back = gaunt_kernel.backward(grad, a, b, via_op, (2, 2, 2), 6, tuple(scales), (True,) * 5, 4)
    assert calls == []
    torch.testing.assert_close(direct, via_op, rtol=0, atol=0)
    torch.testing.assert_close(conv, conv_op, rtol=0, atol=0)
    for x, y in zip(back, back_op):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    out = gaunt_kernel.forward(a.requires_grad_(), b, (2, 2, 2), 6, *scales)
    assert calls == ["_product_op"] and out.requires_grad
    with torch.no_grad():
        gaunt_kernel.forward(a, b, (2, 2, 2), 6, *scales)
    assert calls == ["_product_op"]


def test_compiled_product_equals_eager():
    """``torch.compile(fullgraph=True)`` traces the fused product and its backward without a graph break."""
    g = torch.Generator().manual_seed(6)
    tp = GauntTensorProduct(2, 1, 2, channels=4).double()
    x = torch.randn(10, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(tp, fullgraph=True, backend="aot_eager")
    out = compiled(x, y)
    grads = torch.autograd.grad(out.square().sum(), [x, y, *tp.parameters()])
    ref = tp(x, y)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, y, *tp.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_a_failed_allocation_raises():
    """The kernel checks its scratch allocations: a call whose scratch cannot exist (a plan claiming 2³¹ θ nodes:
    about 800 GB per thread) raises MemoryError instead of writing through a null pointer."""
    try:
        overcommit = open("/proc/sys/vm/overcommit_memory").read().strip()
    except OSError:
        overcommit = "unknown"
    if overcommit != "0":  # "1" grants any size (then the memset would touch it all); "2"/unknown: not checked
        pytest.skip(f"vm.overcommit_memory is {overcommit}: a huge allocation is not refused for certain")
    p = gaunt_kernel.plan(0, 0, 0, 0, torch.float32)
    tables = gaunt_kernel._Tables.from_buffer_copy(p["tables"])
    tables.n_theta = 2**31 - 1
    a, b, out = torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1, 1)
    call = gaunt_kernel._ForwardCall(tables, a.data_ptr(), b.data_ptr(), out.data_ptr(), 1)
    call.channels, call.n_threads = 1, 1
    with pytest.raises(MemoryError, match="could not allocate its scratch memory"):
        gaunt_kernel._call("gaunt_forward_f32", call)
    assert out.item() == 0  # nothing was computed
