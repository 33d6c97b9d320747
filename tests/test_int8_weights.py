"""Block-wise int8 weights and the int8 pack of a teacher folder (dcm/models/int8_weights.py, packed.py)."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dcm.errors import StageError
from dcm.models.family import folder_hash
from dcm.models.int8_weights import BLOCK, decode, decode_file, encodable, encode, encode_file
from dcm.models.packed import PART_PREFIX, RECORD, pack, unpack_verified

pytestmark = pytest.mark.fast


def test_one_block_by_hand():
    """absmax 7.9375 = 127 × 2⁻⁴, so the scale is exactly 2⁻⁴ and every step below is exact in fp32; halves
    round to even as torch.round does."""
    block = torch.zeros(BLOCK)
    block[:5] = torch.tensor([7.9375, -0.09375, 0.03125, 0.1, -7.9375])
    values, scales = encode(block.reshape(2, BLOCK // 2))
    assert scales.tolist() == [0.0625]
    assert values[:5].tolist() == [127, -2, 0, 2, -127]  # -1.5 → -2, 0.5 → 0, 1.6 → 2
    decoded = decode(values, scales, (2, BLOCK // 2), torch.float32).reshape(-1)
    assert decoded[:5].tolist() == [7.9375, -0.125, 0.0, 0.125, -7.9375]
    assert decoded[5:].abs().max().item() == 0


def test_every_value_comes_back_within_half_a_step_of_its_block():
    tensor = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 96)
    values, scales = encode(tensor)
    decoded = decode(values, scales, tuple(tensor.shape), torch.float32)
    bound = (tensor.reshape(-1, BLOCK).abs().amax(dim=1) / 254)[:, None]
    assert ((decoded - tensor).reshape(-1, BLOCK).abs() <= bound * (1 + 1e-6)).all()
    assert values.dtype == torch.int8 and values.numel() == tensor.numel() and scales.numel() == tensor.numel() // BLOCK


def test_an_all_zero_block_stays_zero_and_vectors_are_not_encoded():
    values, scales = encode(torch.zeros(1, BLOCK))
    assert scales.tolist() == [1.0] and decode(values, scales, (1, BLOCK), torch.float32).abs().max().item() == 0
    assert not encodable(torch.ones(BLOCK * 4))  # a bias or a norm's weight: stays exact
    assert not encodable(torch.ones(3, 5))  # not a whole number of blocks
    assert not encodable(torch.ones(4, BLOCK, dtype=torch.int64))
    assert encodable(torch.ones(1, 2, BLOCK, dtype=torch.bfloat16))


def test_a_file_round_trip_keeps_names_shapes_dtypes_and_metadata(tmp_path):
    generator = torch.Generator().manual_seed(1)
    tensors = {"proj.weight": torch.randn(256, 64, generator=generator),
               "proj.bias": torch.randn(256, generator=generator),
               "table": torch.randn(1, 6, 64, generator=generator).bfloat16(),
               "steps": torch.arange(5)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    encode_file(tmp_path / "model.safetensors", tmp_path / "model.safetensors.int8")
    decode_file(tmp_path / "model.safetensors.int8", tmp_path / "decoded.safetensors")
    with safe_open(tmp_path / "decoded.safetensors", framework="pt") as reader:
        assert reader.metadata() == {"format": "pt"} and set(reader.keys()) == set(tensors)
        decoded = {name: reader.get_tensor(name) for name in reader.keys()}
    for name, tensor in tensors.items():
        assert decoded[name].shape == tensor.shape and decoded[name].dtype == tensor.dtype
    assert torch.equal(decoded["proj.bias"], tensors["proj.bias"]) and torch.equal(decoded["steps"], tensors["steps"])
    error = (decoded["proj.weight"] - tensors["proj.weight"]).abs().max().item()
    assert 0 < error <= tensors["proj.weight"].abs().max().item() / 254
    # int8 + one fp32 scale per 32 values: under a third of the fp32 bytes for the encoded matrix
    assert (tmp_path / "model.safetensors.int8").stat().st_size < 0.32 * (tmp_path / "model.safetensors").stat().st_size


def _folder(tmp_path):
    folder = tmp_path / "teacher"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text('{"num_layers": 1}')
    save_file({"w": torch.randn(128, 64, generator=torch.Generator().manual_seed(2)), "b": torch.ones(128)},
              folder / "transformer" / "diffusion_pytorch_model.safetensors")
    return folder


def test_an_int8_pack_unpacks_to_a_decoded_diffusers_folder_with_the_hash_pack_returned(tmp_path):
    folder = _folder(tmp_path)
    exact, small = tmp_path / "exact", tmp_path / "small"
    exact.mkdir(), small.mkdir()
    assert pack(folder, exact, tmp_path / "exact.tar") == folder_hash(folder)
    content_hash = pack(folder, small, tmp_path / "small.tar", encoding="int8")
    assert content_hash != folder_hash(folder)  # decoded weights differ from the source by the rounding
    assert sum(p.stat().st_size for p in small.glob(f"{PART_PREFIX}*")) < \
        0.5 * sum(p.stat().st_size for p in exact.glob(f"{PART_PREFIX}*"))
    (small / RECORD).write_text(json.dumps({"content_hash": content_hash}))
    unpack_verified(small, tmp_path / "unpacked")
    assert sorted(p.name for p in (tmp_path / "unpacked" / "transformer").iterdir()) == \
        ["config.json", "diffusion_pytorch_model.safetensors"]
    with safe_open(tmp_path / "unpacked" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as reader:
        with safe_open(folder / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as source:
            assert (reader.get_tensor("w") - source.get_tensor("w")).abs().max() <= source.get_tensor("w").abs().max() / 254
            assert torch.equal(reader.get_tensor("b"), source.get_tensor("b"))


def test_a_repack_replaces_the_old_parts_and_a_damaged_int8_pack_is_refused(tmp_path):
    folder, out = _folder(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / f"{PART_PREFIX}7").write_bytes(b"left from an earlier, larger pack")
    content_hash = pack(folder, out, tmp_path / "pack.tar", encoding="int8")
    assert [p.name for p in out.glob(f"{PART_PREFIX}*")] == [f"{PART_PREFIX}0"]
    (out / RECORD).write_text(json.dumps({"content_hash": content_hash}))
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    part = damaged / f"{PART_PREFIX}0"
    data = bytearray(part.read_bytes())
    data[data.index(b"dcm_int8") + 20] ^= 0x55  # the encoded file's header: the tar still reads, decoding cannot
    part.write_bytes(bytes(data))
    with pytest.raises(StageError, match="damaged"):
        unpack_verified(damaged, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()
