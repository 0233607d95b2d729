"""The fused convolution and many-body paths (``geomol::gaunt_conv``) against geomol's torch-only Gaunt path."""

import contextlib
import os
import shutil

import pytest
import torch

from geomol.nn import gaunt_kernel
from geomol.nn.gaunt import GauntConv, GauntManyBody
from geomol.nn.graph import radius_graph

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler: geomol uses the torch path"
)
F64 = torch.float64


def group_rows(index: torch.Tensor, channels: int) -> torch.Tensor:
    """The rows ``i·C … i·C + C-1`` an edge index entry ``i`` names."""
    return (index[:, None] * channels + torch.arange(channels)).reshape(-1)


def gathered_reference(a, b, lmaxes, scales, channels, a_index, b_index, out_index, out_rows):
    """The same as ``gaunt_kernel.conv`` with the gathers and the scatter-add done by torch."""
    a = a if a_index is None else a[group_rows(a_index, channels)]
    b = b if b_index is None else b[group_rows(b_index, channels)]
    products = gaunt_kernel.forward(a, b, lmaxes, sum(lmaxes), *scales)
    if out_index is None:
        return products
    return products.new_zeros(out_rows, products.shape[1]).index_add(0, group_rows(out_index, channels), products)


@pytest.mark.parametrize("channels", [3, 16])  # does / does not divide the 32-row tile
@pytest.mark.parametrize("indices", ["a,out", "a,b", "b,out", "a,b,out", "out"])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_op_is_the_gathered_product_scatter_summed(channels, indices, threads):
    g = torch.Generator().manual_seed(channels + 7 * len(indices))
    n_nodes, n_edges, lmaxes = 9, 150 if threads == 2 else 50, (2, 1, 3)
    ka, kb = (lmaxes[0] + 1) ** 2, (lmaxes[1] + 1) ** 2
    index = {name: torch.randint(0, n_nodes, (n_edges,), generator=g) for name in indices.split(",")}
    rows = lambda name: (n_nodes if name in index else n_edges) * channels  # noqa: E731
    a = torch.randn(rows("a"), ka, generator=g, dtype=F64)
    b = torch.randn(rows("b"), kb, generator=g, dtype=F64)
    scales = [torch.rand(channels, (l + 1) ** 2, generator=g, dtype=F64) + 0.5 for l in lmaxes]
    arguments = dict(a_index=index.get("a"), b_index=index.get("b"), out_index=index.get("out"), out_rows=rows("out"))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # several threads add into copies of the output, summed at the end
        gaunt_kernel._ROWS_PER_THREAD, saved = 64, gaunt_kernel._ROWS_PER_THREAD
        out = gaunt_kernel.conv(a, b, lmaxes, sum(lmaxes), *scales, channels=channels, **arguments)
    finally:
        torch.set_num_threads(previous)
        gaunt_kernel._ROWS_PER_THREAD = saved
    expected = gathered_reference(a, b, lmaxes, scales, channels, *arguments.values())
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_conv_op_rejects_indices_outside_the_tensor():
    a, b = torch.randn(6, 4), torch.randn(4, 4)
    with pytest.raises(IndexError, match="a_index"):
        gaunt_kernel.conv(a, b, (1, 1, 1), 3, channels=2, a_index=torch.tensor([0, 3]))  # a has 3 groups of 2 rows


def test_conv_op_gradients_of_every_order():
    """The op's registered backward (itself gather-product-scatters) against finite differences, scales included."""
    g = torch.Generator().manual_seed(1)
    src, dst = torch.tensor([0, 1, 2, 2, 0]), torch.tensor([1, 0, 0, 1, 1])
    a = torch.randn(3 * 2, 9, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(5 * 2, 4, generator=g, dtype=F64, requires_grad=True)
    scales = [(torch.rand(2, k, generator=g, dtype=F64) + 0.5).requires_grad_() for k in (9, 4, 9)]

    def conv(a, b, *s):
        return gaunt_kernel.conv(a, b, (2, 1, 2), 5, *s, channels=2, a_index=src, out_index=dst, out_rows=3 * 2)

    assert torch.autograd.gradcheck(conv, (a, b, *scales))
    assert torch.autograd.gradgradcheck(conv, (a, b, *scales))


def test_conv_op_is_registered_with_fake_and_autograd():
    """``torch.library.opcheck``: schema, fake (shape) implementation, autograd registration, AOT dispatch."""
    g = torch.Generator().manual_seed(2)
    src, dst = torch.randint(0, 5, (12,), generator=g), torch.randint(0, 5, (12,), generator=g)
    a = torch.randn(5 * 4, 9, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(12 * 4, 4, generator=g, dtype=F64, requires_grad=True)
    scales = [(torch.rand(4, k, generator=g, dtype=F64) + 0.5).requires_grad_() for k in (9, 4, 16)]
    arguments = (a, b, [2, 1, 3], 6, *scales, 4, src, None, dst, 5 * 4)
    torch.library.opcheck(torch.ops.geomol.gaunt_conv.default, arguments)


def molecules(generator, n_molecules=3, atoms=6, dtype=F64):
    pos = 1.3 * torch.randn(n_molecules * atoms, 3, generator=generator, dtype=dtype)
    batch = torch.arange(n_molecules).repeat_interleave(atoms)
    return pos, radius_graph(pos, 3.0, batch)


def conv_outputs(conv, x, pos, edge_index, fused, create_graph=False):
    """Output, its gradients (x, pos, parameters) and, with create_graph, d/dθ of the force norm (second order)."""
    x, pos = x.clone().requires_grad_(True), pos.clone().requires_grad_(True)
    params = list(conv.parameters())
    with contextlib.nullcontext() if fused else gaunt_kernel.disabled():
        out = conv(x, pos, edge_index)
        energy = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum()
        grads = torch.autograd.grad(energy, [x, pos, *params], create_graph=create_graph)
        second = torch.autograd.grad(grads[1].square().sum(), [x, *params]) if create_graph else ()
    return [out.detach(), *(t.detach() for t in grads), *second]


@pytest.mark.parametrize("method", ["grid", "direct"])
@pytest.mark.parametrize("lmaxes,channels", [((2, 2, 2), 3), ((1, 2, 3), 4), ((3, 1, 2), 16)])
def test_fused_conv_equals_the_torch_path_in_float64(lmaxes, channels, method):
    g = torch.Generator().manual_seed(sum(lmaxes) + channels)
    conv = GauntConv(*lmaxes, channels=channels, cutoff=3.0, avg_num_neighbors=3.0).double()
    for p in conv.product.parameters():
        p.data.uniform_(0.5, 1.5, generator=g)
    pos, edge_index = molecules(g)
    x = torch.randn(pos.shape[0], channels, (lmaxes[0] + 1) ** 2, generator=g, dtype=F64)
    with gaunt_kernel.method(method):
        fused = conv_outputs(conv, x, pos, edge_index, fused=True, create_graph=True)
    reference = conv_outputs(conv, x, pos, edge_index, fused=False, create_graph=True)
    assert len(fused) == len(reference)
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_fused_conv_numeric_gradients():
    """GauntConv through the fused op against finite differences, first and second order (x and positions)."""
    g = torch.Generator().manual_seed(3)
    conv = GauntConv(1, 1, 1, channels=2, cutoff=3.0).double()
    pos, edge_index = molecules(g, n_molecules=1, atoms=4)
    x = torch.randn(4, 2, 4, generator=g, dtype=F64, requires_grad=True)
    pos.requires_grad_(True)
    assert gaunt_kernel.available(x)
    fn = lambda x, pos: conv(x, pos, edge_index)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, pos))
    assert torch.autograd.gradgradcheck(fn, (x, pos))


def many_body_outputs(mb, x, species, fused):
    x = x.clone().requires_grad_(True)
    with contextlib.nullcontext() if fused else gaunt_kernel.disabled():
        out = mb(x, species)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        gx, gw = torch.autograd.grad((out * weight).sum(), [x, mb.weight], create_graph=True)
        second = torch.autograd.grad(gx.square().sum(), [x, mb.weight])
    return out.detach(), gx.detach(), gw.detach(), *second


@pytest.mark.parametrize("method", ["grid", "direct"])
@pytest.mark.parametrize("lmax,correlation", [(0, 3), (1, 2), (2, 3), (3, 3), (2, 4)])
def test_fused_many_body_equals_the_torch_path_in_float64(lmax, correlation, method):
    g = torch.Generator().manual_seed(10 * lmax + correlation)
    mb = GauntManyBody(lmax, channels=3, correlation=correlation, num_elements=3).double()
    mb.weight.data.normal_(generator=g)
    x = torch.randn(11, 3, (lmax + 1) ** 2, generator=g, dtype=F64)
    species = torch.randint(0, 3, (11,), generator=g)
    with gaunt_kernel.method(method):
        fused = many_body_outputs(mb, x, species, True)
    for a, b in zip(fused, many_body_outputs(mb, x, species, False)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_fused_many_body_numeric_gradients():
    g = torch.Generator().manual_seed(4)
    mb = GauntManyBody(2, channels=2, correlation=3).double()
    mb.weight.data.normal_(generator=g)
    x = torch.randn(3, 2, 9, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(mb, (x,))
    assert torch.autograd.gradgradcheck(mb, (x,))


@pytest.mark.parametrize("march", ["x86-64-v2"])
def test_portable_build_of_the_fused_layers_agrees(march, tmp_path, monkeypatch):
    """A build for CPUs without AVX (16-byte vectors, scalar gathers and scatters) against the torch path."""
    if "x86_64" not in os.uname().machine:
        pytest.skip("the portable flags below are for x86-64")
    monkeypatch.setenv("GEOMOL_CACHE", str(tmp_path))
    flags = tuple(f for f in gaunt_kernel._FLAGS if not f.startswith("-march")) + (f"-march={march}",)
    library = gaunt_kernel.build(flags)
    monkeypatch.setattr(gaunt_kernel, "_library", lambda: library)
    g = torch.Generator().manual_seed(5)
    conv = GauntConv(2, 2, 2, channels=16, cutoff=3.0).double()
    pos, edge_index = molecules(g)
    x = torch.randn(pos.shape[0], 16, 9, generator=g, dtype=F64)
    for a, b in zip(conv_outputs(conv, x, pos, edge_index, True), conv_outputs(conv, x, pos, edge_index, False)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    conv32 = conv.float()
    for a, b in zip(
        conv_outputs(conv32, x.float(), pos.float(), edge_index, True),
        conv_outputs(conv32, x.float(), pos.float(), edge_index, False),
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)
    mb = GauntManyBody(2, channels=16, correlation=3).double()
    mb.weight.data.normal_(generator=g)
    y = torch.randn(40, 16, 9, generator=g, dtype=F64)
    for a, b in zip(many_body_outputs(mb, y, None, True), many_body_outputs(mb, y, None, False)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_layers_fall_back_without_a_compiler(tmp_path, monkeypatch):
    """Without a compiler the layers warn once and take the torch path, with the same numbers."""
    g = torch.Generator().manual_seed(6)
    conv = GauntConv(2, 2, 2, channels=3, cutoff=3.0).double()
    mb = GauntManyBody(2, channels=3, correlation=3).double()
    mb.weight.data.normal_(generator=g)
    pos, edge_index = molecules(g)
    x = torch.randn(pos.shape[0], 3, 9, generator=g, dtype=F64)
    fused = conv(x, pos, edge_index), mb(x)
    monkeypatch.setenv("GEOMOL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    gaunt_kernel._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="torch-only path"):
            assert not gaunt_kernel.available(x)
        torch.testing.assert_close(conv(x, pos, edge_index), fused[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mb(x), fused[1], rtol=1e-12, atol=1e-12)
    finally:
        gaunt_kernel._library.cache_clear()


def test_compiled_conv_equals_eager():
    """``torch.compile(fullgraph=True)`` traces the fused convolution and its backward without a graph break."""
    g = torch.Generator().manual_seed(7)
    conv = GauntConv(2, 1, 2, channels=4, cutoff=3.0).double()
    pos, edge_index = molecules(g)
    x = torch.randn(pos.shape[0], 4, 9, generator=g, dtype=F64, requires_grad=True)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    out = compiled(x, pos, edge_index)
    grads = torch.autograd.grad(out.square().sum(), [x, *conv.parameters()])
    ref = conv(x, pos, edge_index)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
