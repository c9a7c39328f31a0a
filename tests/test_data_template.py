"""Templates: frames, ids and loss weights against hand-written arrays (docs/data.md, docs/model.md)."""

import numpy as np
import pytest

from bagpiper_jax.audio_encoder.config import output_lengths
from bagpiper_jax.data.manifest import ManifestError, parse_line
from bagpiper_jax.data.records import PreparedExample, PreparedMessage, decode_record, encode_record
from bagpiper_jax.data.template import TemplateError, example_frames, template
from bagpiper_jax.vocab import Vocab

# 16 specials, text ids 16..25, stream 0 audio 26 (pad) 27..29, stream 1 audio 30 (pad) 31..33.
V = Vocab(num_special=16, text_size=10, num_streams=2, codebook_size=3)
H = 0.5  # audio weight = 1 / streams


def msg(role, modality, kind, array):
    return PreparedMessage(role, modality, kind, np.asarray(array))


def run(ex, **kw):
    kw.setdefault("piece_frames", 200)
    out = template(ex, V, output_lengths, mel_bins=4, **kw)
    assert len(out["ids"]) == example_frames(ex, V, output_lengths)
    return out


TEXT_TO_AUDIO = PreparedExample(
    "t2a",
    "text_to_audio",
    0,
    (
        msg("user", "text", "text", np.array([1, 2], np.int32)),
        msg("assistant", "audio", "codes", np.array([[0, 1], [2, 0]], np.int16)),
    ),
)


def test_text_to_audio_frames_and_weights():
    out = run(TEXT_TO_AUDIO)
    expected_ids = [
        [1, 0],
        [5, 0],
        [7, 0],
        [17, 0],
        [18, 0],
        [2, 0],  # bos user text t t eos
        [6, 0],
        [8, 0],
        [27, 30],
        [29, 32],
        [26, 31],
        [2, 0],
    ]  # assistant audio, interleaved, eos
    expected_mask = [[0, 0]] * 6 + [[1, 0], [1, 0], [H, H], [H, H], [H, H], [1, 0]]
    np.testing.assert_array_equal(out["ids"], expected_ids)
    np.testing.assert_array_equal(out["loss_mask"], expected_mask)
    assert out["mel"].shape == (0, 4) and out["mel_start"].shape == (0,) and out["mel_offset"].shape == (0,)


def test_loss_region_all_trains_user_messages():
    out = run(TEXT_TO_AUDIO, loss_region="all")
    np.testing.assert_array_equal(out["loss_mask"][:6, 0], [0, 1, 1, 1, 1, 1])


def test_cfg_dropout_keeps_only_the_audio_message():
    out = run(TEXT_TO_AUDIO, guidance_keep=1)
    np.testing.assert_array_equal(out["ids"][:6], 0)
    np.testing.assert_array_equal(out["loss_mask"][:6], 0)
    np.testing.assert_array_equal(out["ids"][6:], run(TEXT_TO_AUDIO)["ids"][6:])
    np.testing.assert_array_equal(out["loss_mask"][6:], run(TEXT_TO_AUDIO)["loss_mask"][6:])


def test_text_token0_becomes_the_pad_id_with_its_weight_kept():
    """The reference adds the text offset with ``np.where(seq == 0, 0, seq + offset)``: Qwen3's
    token 0 ("!") lands on id 0, still trained (weight 1 in an assistant message)."""
    ex = PreparedExample(
        "bang",
        "text_only",
        0,
        (msg("user", "text", "text", [0, 1]), msg("assistant", "text", "text", np.array([4, 0, 0, 9], np.int32))),
    )
    out = run(ex)
    np.testing.assert_array_equal(out["ids"][:, 0], [1, 5, 7, 0, 17, 2, 6, 7, 20, 0, 0, 25, 2])
    np.testing.assert_array_equal(out["ids"][:, 1], 0)
    np.testing.assert_array_equal(out["loss_mask"][:, 0], [0] * 6 + [1] * 7)
    np.testing.assert_array_equal(out["loss_mask"][:, 1], 0)
    ordinary = run(ex, text_token0_as_pad=False)  # the switch: "!" is text id 16 like any other
    np.testing.assert_array_equal(ordinary["ids"][:, 0], [1, 5, 7, 16, 17, 2, 6, 7, 20, 16, 16, 25, 2])
    np.testing.assert_array_equal(ordinary["loss_mask"], out["loss_mask"])


TWO_AUDIO = PreparedExample(
    "two",
    "dialogue",
    0,
    (
        msg("user", "text", "text", np.array([1], np.int32)),
        msg("assistant", "audio", "codes", np.array([[0, 1], [2, 0]], np.int16)),
        msg("assistant", "text", "text", np.array([2], np.int32)),
        msg("assistant", "audio", "codes", np.array([[1, 2]], np.int16)),
    ),
)


def test_guidance_dropout_keeps_the_codes_of_the_other_audio_message():
    """With two assistant audio messages, guidance dropout keeps one message whole; the other
    one's content frames keep their interleaved codes with weight 0 (the reference writes every
    codec entry back after zeroing), its role, modality and END frames are zeroed."""
    full = run(TWO_AUDIO)
    np.testing.assert_array_equal(
        full["ids"],
        [[1, 0], [5, 0], [7, 0], [17, 0], [2, 0]]  # bos user text t eos
        + [[6, 0], [8, 0], [27, 30], [29, 32], [26, 31], [3, 0]]  # assistant audio (interleaved) eot
        + [[6, 0], [7, 0], [18, 0], [3, 0]]  # assistant text t eot
        + [[6, 0], [8, 0], [28, 30], [26, 33], [2, 0]],  # assistant audio eos
    )
    out = run(TWO_AUDIO, guidance_keep=3)
    expected = np.zeros((20, 2), np.int32)
    expected[7:10] = [[27, 30], [29, 32], [26, 31]]  # the other message's codes
    expected[15:] = full["ids"][15:]  # the kept message
    np.testing.assert_array_equal(out["ids"], expected)
    mask = np.zeros((20, 2), np.float32)
    mask[15:] = [[1, 0], [1, 0], [H, H], [H, H], [1, 0]]
    np.testing.assert_array_equal(out["loss_mask"], mask)
    zeroed = run(TWO_AUDIO, guidance_keep=3, guidance_keep_other_audio=False)  # the switch: zero them too
    expected[7:10] = 0
    np.testing.assert_array_equal(zeroed["ids"], expected)
    np.testing.assert_array_equal(zeroed["loss_mask"], mask)


def test_dialogue_with_continuous_audio_and_eot():
    mel = np.arange(250 * 4, dtype=np.float32).reshape(250, 4)
    ex = PreparedExample(
        "d",
        "dialogue",
        0,
        (
            msg("system", "text", "text", np.array([0], np.int32)),
            msg("user", "audio", "mel", mel),
            msg("user", "text", "text", np.array([3], np.int32)),
            msg("assistant", "text", "text", np.array([4, 5], np.int32)),
            msg("assistant", "text", "text", np.array([6], np.int32)),
        ),
    )
    out = run(ex)
    tokens = 33  # 250 mel frames: 13 + 13 + ceil(ceil(ceil(50/2)/2)/2) = 7
    ids, mask = out["ids"], out["loss_mask"]
    expected_head = [
        [1, 0],
        [4, 0],
        [7, 0],
        [0, 0],  # text token 0 -> the pad id (test_text_token0_becomes_the_pad_id_with_its_weight_kept)
        [2, 0],  # bos system text t eos (next role differs)
        [5, 0],
        [8, 0],
    ]  # user audio
    np.testing.assert_array_equal(ids[:7], expected_head)
    np.testing.assert_array_equal(ids[7 : 7 + tokens], 0)  # continuous placeholders
    tail = [
        [3, 0],  # eot: next message is also user
        [5, 0],
        [7, 0],
        [19, 0],
        [2, 0],  # user text t eos
        [6, 0],
        [7, 0],
        [20, 0],
        [21, 0],
        [3, 0],  # assistant text t t eot
        [6, 0],
        [7, 0],
        [22, 0],
        [2, 0],
    ]  # assistant text t eos
    np.testing.assert_array_equal(ids[7 + tokens :], tail)
    np.testing.assert_array_equal(mask[: 7 + tokens + 5], 0)
    np.testing.assert_array_equal(mask[7 + tokens + 5 :, 0], 1)
    np.testing.assert_array_equal(mask[:, 1], 0)
    # Two pieces: frames [0, 200) -> 26 tokens from frame 7, frames [200, 250) -> 7 tokens from frame 33.
    np.testing.assert_array_equal(out["mel_lengths"], [200, 50])
    np.testing.assert_array_equal(out["mel_start"], [7, 7 + 26])
    np.testing.assert_array_equal(out["mel_clip_lengths"], [250, 250])
    np.testing.assert_array_equal(out["mel"], mel)  # the pieces back to back, unpadded
    np.testing.assert_array_equal(out["mel_offset"], [0, 200])
    dropped = run(ex, guidance_keep=3)
    assert dropped["mel"].shape == (0, 4) and dropped["mel_offset"].shape == (0,)


def test_bad_examples_are_named():
    bad = PreparedExample("x", "text_to_audio", 0, (msg("assistant", "audio", "codes", np.zeros((3, 5), np.int16)),))
    with pytest.raises(TemplateError, match="example x: codes of shape"):
        run(bad)
    bad_mel = PreparedExample("y", "audio_to_text", 0, (msg("user", "audio", "mel", np.zeros((10, 3))),))
    with pytest.raises(TemplateError, match=r"example y: log-mel of shape \(10, 3\)"):
        run(bad_mel)


def test_record_round_trip():
    rec = decode_record(encode_record(TEXT_TO_AUDIO))
    assert rec.id == "t2a" and rec.task == "text_to_audio"
    for a, b in zip(rec.messages, TEXT_TO_AUDIO.messages):
        assert (a.role, a.modality, a.kind) == (b.role, b.modality, b.kind)
        np.testing.assert_array_equal(a.array, b.array)
        assert a.array.dtype == b.array.dtype


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "task": "text_to_audio", "text1": "", "audio1": "x.wav"}', "field 'text1' is empty"),
        ('{"id": "a", "task": "text_to_audio", "text1": 3, "audio1": "x.wav"}', "field 'text1' must be a string"),
        ('{"id": "a", "task": "sing"}', "field 'task' must be one of"),
        ('{"task": "text_only"}', "field 'id' must be a non-empty string"),
        ('{"id": "a", "task": "dialogue", "dialogue": [["robot", "text", "hi"]]}', r"dialogue\[0\]: role must be"),
        ("{not json", "not valid JSON"),
    ],
)
def test_manifest_errors_name_line_and_field(tmp_path, line, message):
    with pytest.raises(ManifestError, match=message):
        parse_line(line, "m.jsonl:3", tmp_path)


def test_manifest_tasks_and_paths(tmp_path):
    ex = parse_line('{"id": "a", "task": "audio_to_text", "audio1": "sub/a.wav", "text1": "a tone"}', "m:1", tmp_path)
    assert [(m.role, m.modality) for m in ex.messages] == [("user", "audio"), ("assistant", "text")]
    assert ex.messages[0].content == str(tmp_path / "sub" / "a.wav")
    ex = parse_line('{"id": "b", "task": "text_only", "text2": "second", "text1": "first"}', "m:2", tmp_path)
    assert [m.content for m in ex.messages] == ["first", "second"]
