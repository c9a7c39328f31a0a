"""XCodec parity with HF ``XcodecModel`` (tiny random model built locally, fp32).

``make_tiny_hf`` is shared by the other codec tests.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_HF = dict(
    codebook_size=1024,
    acoustic_model_config=dict(
        encoder_hidden_size=4,
        decoder_hidden_size=32,
        hidden_size=8,
        downsampling_ratios=[8, 5, 4, 2],
        upsampling_ratios=[8, 5, 4, 2],
    ),
    semantic_model_config=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embedding_groups=16,
    ),
)


def make_tiny_hf(directory, seed: int = 0):
    """A tiny random HF XcodecModel saved under ``directory``; every parameter and codebook
    is randomised (HF init leaves codebooks zero, norms at 1/0, Snake alpha at 1)."""
    torch.manual_seed(seed)
    model = transformers.XcodecModel(transformers.XcodecConfig(**TINY_HF)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "layer_norm.weight", "weight_g", "original0")):
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn_like(p))
        # Codebooks at the scale of the latents they quantize, shrinking per stage.
        wav = torch.randn(1, 1, 3200) * 0.1
        sem = model.encoder_semantic(model._extract_semantic_features(wav).transpose(1, 2))
        latent = model.fc(torch.cat([model.acoustic_encoder(wav), sem], 1).transpose(1, 2))
        scale = float(latent.std())
        for i, q in enumerate(model.quantizer.quantizers):
            q.codebook.embed.copy_(torch.randn_like(q.codebook.embed) * scale * 0.6**i)
            q.codebook.embed_avg.copy_(torch.randn_like(q.codebook.embed_avg))
            q.codebook.cluster_size.copy_(torch.rand_like(q.codebook.cluster_size))
    model.save_pretrained(str(directory))
    return model


# Lengths in one bucket (11 frames): a multiple of the hop, remainders below 80 and at
# least 312 (no acoustic padding) and in between (HF's acoustic padding branch).
LENGTHS = (3520, 3210, 3300, 3500, 3519)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF model, our model, clips, a tokenizer sharded over 8 devices) for one tiny codec."""
    import jax

    from bagpiper_jax.codec.params import model_from_params
    from bagpiper_jax.codec.tokenizer import XCodecTokenizer
    from bagpiper_jax.config import MeshConfig
    from bagpiper_jax.convert.hf_xcodec import import_hf_xcodec
    from bagpiper_jax.sharding import make_mesh

    directory = tmp_path_factory.mktemp("tiny_xcodec")
    hf = make_tiny_hf(directory)
    cfg, params = import_hf_xcodec(directory)
    model = model_from_params(cfg, params)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]
    mesh_cfg = MeshConfig(data=8, fsdp=1, tensor=1)
    assert len(jax.devices()) == 8
    tok = XCodecTokenizer(model, batch_size=8, mesh=make_mesh(mesh_cfg), rules=mesh_cfg.rules)
    return hf, model, clips, tok


def _hf_codes(hf, wav, bandwidth=None):
    with torch.no_grad():
        return hf.encode(torch.from_numpy(wav)[None, None], bandwidth=bandwidth, return_dict=False)[0].numpy().T


def _hf_distances(hf, wav):
    """HF's per-quantizer distances ``[quantizer, frames, codebook]`` along HF's own codes."""
    with torch.no_grad():
        x = torch.from_numpy(wav)[None, None]
        sem = hf.encoder_semantic(hf._extract_semantic_features(x).transpose(1, 2))
        ac = (
            x
            if hf._get_conv1d_output_lengths(x.shape[2], hf.acoustic_encoder) == sem.shape[2]
            else torch.nn.functional.pad(x, (hf.pad, hf.pad))
        )
        residual = hf.fc(torch.cat([hf.acoustic_encoder(ac), sem], 1).transpose(1, 2))[0]
        out = []
        for q in hf.quantizer.quantizers:
            e = q.codebook.embed
            out.append((residual.pow(2).sum(1, keepdim=True) - 2 * residual @ e.t() + e.pow(2).sum(1)).numpy())
            residual = residual - e[q.codebook.encode(residual)]
    return np.stack(out)


def test_encode_matches_hf(tiny):
    """Codes equal HF encode, clip by clip, for a padded, bucketed, 8-way sharded batch;
    any mismatch must be a near-tie (top-2 gap < 1e-4 relative) and at most 0.5%."""
    hf, _, clips, tok = tiny
    ours = tok.encode(clips)
    total = mismatched = 0
    for wav, codes in zip(clips, ours):
        ref = _hf_codes(hf, wav)
        assert codes.shape == ref.shape == (tok.cfg.num_frames(len(wav)), 8)
        total += ref.size
        diff = np.argwhere(codes != ref)
        if len(diff):
            dist = _hf_distances(hf, wav)
            for t, q in diff[:1]:  # later stages of a flipped frame follow different residuals
                top2 = np.sort(dist[q, t])[:2]
                assert top2[1] - top2[0] < 1e-4 * abs(top2[0]), (len(wav), t, q, top2)
            mismatched += len(diff)
    assert mismatched <= 0.005 * total


def test_bandwidth_selects_codebooks_as_hf(tiny):
    """HF's bandwidth -> codebook count mapping (0.5→1 … 4→8 kbps); the codes at a lower
    bandwidth are the leading codebooks of the full codes."""
    hf, model, clips, tok = tiny
    counts = [model.cfg.quantizers_for_bandwidth(bw) for bw in model.cfg.target_bandwidths]
    assert counts == [hf.quantizer.get_num_quantizers_for_bandwidth(bw) for bw in hf.config.target_bandwidths]
    assert counts == [1, 2, 3, 4, 8]
    np.testing.assert_array_equal(tok.encode(clips[:1])[0][:, :3], _hf_codes(hf, clips[0], bandwidth=1.5))


def test_decode_matches_hf(tiny):
    """Decoded audio (incl. the stride-5 transposed conv) within 1e-4 relative of HF, for
    the encoded clips and for random codes of 17 and 18 frames padded into one bucket."""
    hf, _, clips, tok = tiny
    rng = np.random.default_rng(1)
    codes = [_hf_codes(hf, w) for w in clips] + [rng.integers(0, 1024, (n, 8)) for n in (17, 18)]
    ours = tok.decode(codes)
    for c, wav in zip(codes, ours):
        with torch.no_grad():
            ref = hf.decode(torch.from_numpy(c.T[None]).long(), return_dict=False)[0, 0].numpy()
        assert wav.shape == ref.shape == (len(c) * 320,)
        assert np.abs(wav - ref).max() <= 1e-4 * np.abs(ref).max()


def test_hubert_hidden_state_mean_matches_hf(tiny):
    import jax
    import jax.numpy as jnp

    hf, model, clips, _ = tiny
    wav = np.stack([np.pad(c, (0, 3520 - len(c))) for c in clips])
    lengths = jnp.asarray([len(c) + 320 for c in clips])
    mean, frames = jax.jit(lambda w, n: model.semantic_model(jnp.pad(w, ((0, 0), (160, 160))), n))(wav, lengths)
    for b, c in enumerate(clips):
        with torch.no_grad():
            ref = hf._extract_semantic_features(torch.from_numpy(c)[None, None])[0].numpy()
        assert int(frames[b]) == len(ref)
        np.testing.assert_allclose(np.asarray(mean[b, : len(ref)]), ref, rtol=0, atol=1e-5)


def test_semantic_decoder_matches_hf(tiny):
    import jax.numpy as jnp

    hf, model, clips, _ = tiny
    codes = _hf_codes(hf, clips[0])
    ours = model.decode_semantic(jnp.asarray(codes)[None], jnp.asarray([len(codes)]))[0]
    with torch.no_grad():
        q = hf.quantizer.decode(torch.from_numpy(codes.T[:, None]).long())
        ref = hf.decoder_semantic(hf.fc1(q.transpose(1, 2)).transpose(1, 2))[0].numpy().T
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_clip_alone_equals_bucketed_batch(tiny):
    """The same codes for a clip encoded alone (batch of 1) and padded inside a sharded batch."""
    from bagpiper_jax.codec.tokenizer import XCodecTokenizer

    _, model, clips, tok = tiny
    alone = XCodecTokenizer(model, batch_size=1).encode([clips[1]])[0]
    np.testing.assert_array_equal(alone, tok.encode(clips)[1])
