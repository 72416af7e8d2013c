"""A single-map VQ tokenizer seeded from a multi-scale one (arvision.tokenizers.convert)."""

import pytest
import torch

from arvision.config import TokenizerConfig
from arvision.errors import ArvisionError
from arvision.tokenizers.convert import single_map_from_multiscale
from arvision.tokenizers.models import VQTokenizer, build_tokenizer


def _multiscale():
    torch.manual_seed(0)
    cfg = TokenizerConfig(kind="multiscale", vocab_size=32, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 1, 1),
                          num_res_blocks=1, patch_nums=(1, 2, 4))
    return build_tokenizer(cfg).eval()


def test_the_trunk_is_kept_and_every_code_is_one_of_the_encoders_features():
    src = _multiscale()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vq = single_map_from_multiscale(src, images, vocab_size=48, generator=torch.Generator().manual_seed(0))
    assert isinstance(vq, VQTokenizer) and vq.cfg.kind == "vq" and vq.cfg.vocab_size == 48
    src_state = src.state_dict()
    for name, value in vq.state_dict().items():
        if name != "quantize.embedding.weight":
            assert torch.equal(value, src_state[name]), name
    with torch.no_grad():
        feats = src.features(images).permute(0, 2, 3, 1).reshape(-1, 8)  # 3 images x 4x4 = 48 positions
        # all 48 positions became the 48 codes: each is its own nearest code, so quantising is exact
        assert sorted(map(tuple, vq.quantize.embedding.weight.tolist())) == sorted(map(tuple, feats.tolist()))
        ids = vq.encode(images)
        assert ids.unique().numel() == 48
        f_q = vq.ids_to_features(ids, (4, 4))
        assert torch.allclose(f_q, src.features(images), atol=1e-6)
        assert torch.allclose(vq.decode(ids), src.decode_features(src.features(images)), atol=1e-5)


def test_too_few_positions_and_a_single_map_source_are_refused():
    src = _multiscale()
    images = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ArvisionError, match="16 latent positions, fewer than the 32 codes"):
        single_map_from_multiscale(src, images, vocab_size=32)
    vq = single_map_from_multiscale(src, images, vocab_size=8)
    with pytest.raises(ArvisionError, match="a multi-scale tokenizer is needed"):
        single_map_from_multiscale(vq, images, vocab_size=8)
