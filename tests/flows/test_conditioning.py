import pytest
import torch

from geomol.flows.conditioning import METHODS, PropertyConditioning, PropertyEmbedding


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("expansion", [False, True])
def test_methods_combine_properties_per_molecule(method, expansion, generator):
    torch.manual_seed(0)
    cond = PropertyConditioning(2, 8, method, gaussian_expansion=expansion, n_gaussians=4)
    batch = torch.tensor([0, 0, 1, 1, 1])
    h = torch.randn(5, 8, generator=generator)
    p = torch.randn(2, 2, generator=generator)
    out = cond(h, p, batch)
    assert out.shape == (5, 8)
    # Changing molecule 1's properties changes only molecule 1's atoms.
    p2 = p.clone()
    p2[1] += 1.0
    out2 = cond(h, p2, batch)
    torch.testing.assert_close(out2[:2], out[:2])
    assert not torch.allclose(out2[2:], out[2:])


def test_method_formulas(generator):
    torch.manual_seed(0)
    batch = torch.zeros(3, dtype=torch.long)
    h = torch.randn(3, 6, generator=generator)
    p = torch.randn(1, 1, generator=generator)
    emb = {m: PropertyConditioning(1, 6, m) for m in METHODS}
    e = emb["sum"].embedding(p)
    torch.testing.assert_close(emb["sum"](h, p, batch), h + e)
    gate = emb["multiply"].embedding(p).sigmoid() + 0.5
    torch.testing.assert_close(emb["multiply"](h, p, batch), h * gate)
    for m in ("concatenate", "concatenate_sum", "concatenate_multiply"):
        mixed = emb[m].phi(torch.cat([h, emb[m].embedding(p).expand(3, -1)], -1))
        expected = {
            "concatenate": mixed,
            "concatenate_sum": h + mixed,
            "concatenate_multiply": h * (mixed.sigmoid() + 0.5),
        }
        torch.testing.assert_close(emb[m](h, p, batch), expected[m])
    # The concatenate_multiply gate depends on h (it comes from phi([h || p])), unlike multiply's.
    ratio = emb["concatenate_multiply"](h, p, batch) / h
    assert bool(((ratio > 0.5) & (ratio < 1.5)).all())
    assert not torch.allclose(ratio[0], ratio[1])


def test_embedding_errors():
    with pytest.raises(ValueError, match="unknown conditioning method"):
        PropertyConditioning(1, 4, "add")
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        PropertyEmbedding(2, 4)(torch.zeros(3, 1))


@pytest.mark.parametrize("method", METHODS)
def test_unconditional_molecules_keep_their_features(method, generator):
    # The null condition of classifier-free guidance: flagged molecules pass h through untouched, whatever
    # their properties; the others are conditioned exactly as without the flag.
    torch.manual_seed(0)
    cond = PropertyConditioning(1, 8, method)
    batch = torch.tensor([0, 0, 1, 1, 1, 2])
    h = torch.randn(6, 8, generator=generator)
    p = torch.randn(3, 1, generator=generator)
    null = torch.tensor([False, True, False])
    out = cond(h, p, batch, null)
    torch.testing.assert_close(out[2:5], h[2:5], rtol=0, atol=0)
    plain = cond(h, p, batch)
    torch.testing.assert_close(out[[0, 1, 5]], plain[[0, 1, 5]], rtol=0, atol=0)
    assert not torch.allclose(plain[2:5], h[2:5])
