"""Bootstrapping the flux LoRA encoder from captioned pool LoRAs (`encoder bootstrap`), on FLUX.1-shaped test LoRAs
anyone can make (`tiny-flux-loras`): it trains, judges against text-only retrieval on held-out LoRAs, promotes only
when the weights win, and a flux worker — the tiny stand-in too — embeds FLUX.1 LoRAs with what it wrote."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
import torch.nn.functional as F

from autolora_worker.__main__ import main
from autolora_worker.encoder import LoraEncoder, family_layer_table, layer_table, load_encoder, save_encoder
from autolora_worker.engine import Engine
from autolora_worker.errors import ModelLoadError
from autolora_worker.families import get_family
from autolora_worker.lora.canonical import LoraLayer
from autolora_worker.lora.formats import FORMATS, read_lora_file, write_lora_file
from autolora_worker.lora.keys import linear_shapes
from autolora_worker.models import load_backbone
from autolora_worker.text import MiniLMTextEncoder
from autolora_worker.tiny_flux import write_tiny_flux

from test_lora_formats import XLABS_DOUBLE, block_modules, make_layers

# A small encoder and few steps: on the 8 × 5 test LoRAs, 40 steps (6.5 s on one core) gave held-out weights MRR
# 0.76-0.81 and recall@1 0.625 on four data seeds (text only: MRR 0.34-0.39, recall@1 0.125-0.25, i.e. chance);
# 20 steps already gave MRR 0.73-0.94.
SMALL = ["--steps", "40", "--width", "32", "--probes", "2", "--depth", "1"]
CONCEPTS, PER_CONCEPT = 8, 5
HELD_OUT = CONCEPTS * PER_CONCEPT // 5  # --heldout-every 5
RESULT_FIELDS = {"version", "promote", "reason", "recall_at_1", "recall_at_3", "mrr", "text_only_recall_at_1",
                 "text_only_recall_at_3", "text_only_mrr", "train_loras", "heldout_loras", "skipped", "steps",
                 "final_loss", "seconds"}


def run_main(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def bootstrap(examples, out, *extra: str) -> tuple[int, dict | None, str]:
    """Run `encoder bootstrap --json` as the host does (with the --bundle it passes every trainer): exit code, the
    last stdout line as JSON (on success), stderr."""
    code, stdout, stderr = run_main(["encoder", "bootstrap", "--family", "flux", "--examples", str(examples),
                                     "--out", str(out), "--device", "cpu", "--json", "--bundle", "ignored", *extra])
    return code, json.loads(stdout.splitlines()[-1]) if code == 0 else None, stderr


def write_examples(path, entries: list[dict]):
    path.write_text(json.dumps({"examples": entries}))
    return path


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool") / "loras"
    code, stdout, stderr = run_main(["tiny-flux-loras", "--out", str(folder), "--concepts", str(CONCEPTS),
                                     "--per-concept", str(PER_CONCEPT)])
    assert code == 0, stderr
    assert json.loads(stdout)["loras"] == CONCEPTS * PER_CONCEPT
    return folder


@pytest.fixture(scope="module")
def manifest(pool) -> list[dict]:
    return json.loads((pool / "manifest.json").read_text())["loras"]


@pytest.fixture(scope="module")
def promoted(pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("bootstrap") / "encoder"
    code, result, stderr = bootstrap(pool / "examples.json", out, *SMALL)
    assert code == 0, stderr
    return out, result, stderr


def test_tiny_flux_loras_are_flux1_shaped_in_every_format_and_alike_within_a_concept(pool, manifest):
    assert Counter(record["concept"] for record in manifest) == Counter(
        {concept: PER_CONCEPT for concept in {record["concept"] for record in manifest}})
    assert len({record["concept"] for record in manifest}) == CONCEPTS
    assert Counter(record["format"] for record in manifest) == Counter({name: 8 for name in FORMATS})
    for record in manifest:
        # Names say nothing, as many community uploads; the captions name the concept, three ways.
        assert re.fullmatch(r"lora-\d{4}", record["name"]) and record["tags"] == []
        assert len(set(record["captions"])) == 3 and all(record["concept"] in text for text in record["captions"])
        assert (pool / record["file"]).stat().st_size < 1_000_000  # 0.4 MB (diffusers) to 0.7 MB (fused q/k/v)
    modules = set(block_modules(XLABS_DOUBLE, (), num_double=2, num_single=0))
    first = {}  # concept -> (record, ΔW of its first LoRA's to_q)
    for record in manifest[:12]:
        lora = read_lora_file(pool / record["file"])
        assert (lora.family, lora.format, set(lora.layers)) == ("flux", record["format"], modules)
        assert lora.layers["transformer_blocks.0.attn.to_q"].in_features == 3072  # FLUX.1's real width
        delta = lora.layers["transformer_blocks.0.attn.to_q"].delta().flatten()
        if record["concept"] in first:  # a second LoRA of a concept: alike, not equal (measured cosine ~0.6)
            similarity = float(F.cosine_similarity(delta, first[record["concept"]], dim=0))
            assert 0.3 < similarity < 0.95, similarity
        else:
            for other in first.values():  # another concept: unrelated
                assert abs(float(F.cosine_similarity(delta, other, dim=0))) < 0.1
            first[record["concept"]] = delta


def test_bootstrap_promotes_an_encoder_that_finds_held_out_loras_by_their_weights(promoted):
    out, result, stderr = promoted
    assert set(result) == RESULT_FIELDS
    assert (result["train_loras"], result["heldout_loras"], result["skipped"]) == (32, HELD_OUT, [])
    assert result["version"].startswith("enc-flux-") and result["version"].endswith("-s0-40")
    assert result["steps"] == 40 and result["final_loss"] > 0 and result["seconds"] > 0
    assert "[bootstrap]" in stderr and "[encoder] step 40/40" in stderr  # progress on stderr with --json
    # The names say nothing, so text only is near chance (1/8 recall@1); the weights tell the concepts apart
    # (measured recall@1 0.625, MRR ~0.8; a perfect encoder is capped below 1 where two held-out LoRAs share a
    # concept, since their queries are the same sentence).
    assert result["promote"] is True and result["mrr"] > result["text_only_mrr"]
    assert result["recall_at_1"] >= 3 / HELD_OUT and result["recall_at_3"] >= 0.75
    assert "weights MRR" in result["reason"] and "text-only MRR" in result["reason"]
    encoder = load_encoder(out, table=family_layer_table("flux", None))
    assert encoder.version == result["version"] and len(encoder.table) == len(linear_shapes("flux"))
    metadata = json.loads((out / "encoder.json").read_text())["metadata"]
    assert metadata["promote"] is True and metadata["train_loras"] == 32 and metadata["heldout_loras"] == HELD_OUT


def test_text_that_names_the_concept_keeps_text_retrieval_and_bad_files_are_skipped(pool, manifest, tmp_path):
    examples = json.loads((pool / "examples.json").read_text())["examples"]
    for example, record in zip(examples, manifest):
        example["text"] = [record["concept"]]
    proving_ground = tmp_path / "proving-ground.safetensors"
    write_lora_file(make_layers(block_modules(XLABS_DOUBLE, (), num_double=1, num_single=0)), proving_ground,
                    "diffusers")
    stand_in_shaped = tmp_path / "stand-in-shaped.safetensors"  # the tiny stand-in's 32 wide, no family's
    generator = torch.Generator().manual_seed(0)
    write_lora_file({"transformer_blocks.0.attn.to_q": LoraLayer(torch.randn(2, 32, generator=generator),
                                                                 torch.randn(32, 2, generator=generator))},
                    stand_in_shaped, "diffusers")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    captions = ["a dog in neon style"]
    extra = [{"lora": str(proving_ground), "captions": captions, "text": []},
             {"lora": str(stand_in_shaped), "captions": captions, "text": []},
             {"lora": str(tmp_path / "garbage.safetensors"), "captions": captions, "text": []},
             {"lora": str(tmp_path / "missing.safetensors"), "captions": captions, "text": []},
             {"lora": examples[0]["lora"].replace("lora-0000", "lora-0001"), "captions": [], "text": ["x"]}]
    path = write_examples(tmp_path / "examples.json", extra[:2] + examples + extra[2:])

    code, result, stderr = bootstrap(path, tmp_path / "encoder", *SMALL)
    assert code == 0, stderr
    # Text naming the concept ranks every held-out LoRA of the query's concept first, and LoRAs of one concept are
    # queried by the same sentence, so no scorer can do better: the (concept-perfect) weights tie at best, and a tie
    # keeps text retrieval.
    assert result["text_only_mrr"] >= result["mrr"] and result["text_only_recall_at_1"] >= 3 / HELD_OUT
    assert result["promote"] is False and "do not beat text-only" in result["reason"]
    assert (result["train_loras"], result["heldout_loras"]) == (32, HELD_OUT)  # the same LoRAs train
    assert (tmp_path / "encoder" / "encoder.json").is_file()  # a refused candidate is saved too, for the record
    reasons = {item["lora"].rsplit("/", 1)[-1]: item["reason"] for item in result["skipped"]}
    assert len(reasons) == 5, reasons
    assert reasons["proving-ground.safetensors"] == "a LoRA for proving-ground, not flux"
    misfit = reasons["stand-in-shaped.safetensors"]
    assert "32→32" in misfit and "3072→3072" in misfit
    assert reasons["garbage.safetensors"].startswith("unreadable: ")
    assert reasons["missing.safetensors"].startswith("unreadable: ")
    assert reasons["lora-0001.safetensors"] == "no captions"


def test_too_few_captioned_loras_exit_2_naming_the_counts(pool, tmp_path):
    examples = json.loads((pool / "examples.json").read_text())["examples"]
    path = write_examples(tmp_path / "few.json", examples[:5] + [{**examples[5], "captions": []}])
    code, result, stderr = bootstrap(path, tmp_path / "encoder")
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "5 captioned LoRAs" in stderr and "at least 6" in stderr
    code, _, stderr = bootstrap(path, tmp_path / "encoder", "--heldout-every", "10")
    assert code == 2 and "at least 11" in stderr  # two held out: the 1st and the 11th
    code, _, stderr = bootstrap(tmp_path / "nowhere.json", tmp_path / "encoder")
    assert code == 2 and "cannot read the examples file" in stderr
    assert not (tmp_path / "encoder").exists()


def test_the_flux_table_is_flux1s_whatever_model_is_loaded_and_the_proving_grounds_is_its_models(backbone):
    table = family_layer_table("flux", backbone.transformer)  # any model: FLUX.1's all the same
    assert [(layer.name, layer.in_features, layer.out_features) for layer in table] == [
        (name, *shape) for name, shape in linear_shapes("flux").items()]
    assert len(table) == 19 * 14 + 38 * 6 + 10
    assert family_layer_table("proving-ground", backbone.transformer) == layer_table(backbone.transformer)


def test_a_worker_on_the_stand_in_embeds_flux1_loras_once_given_the_bootstrapped_encoder(promoted, pool, manifest,
                                                                                        tmp_path, backbone):
    out, result, _ = promoted
    write_tiny_flux(tmp_path / "tiny-flux")
    engine = Engine(load_backbone("flux", tmp_path / "tiny-flux", "cpu"))
    first = str(pool / manifest[0]["file"])
    assert engine.embed(first)["embedding"] is None
    # An encoder for another model's table (the proving ground's) is refused, and changes nothing.
    save_encoder(LoraEncoder(layer_table(backbone.transformer), width=32, depth=1, heads=2, probes=2),
                 tmp_path / "proving-ground-encoder", "enc-proving-ground")
    with pytest.raises(ModelLoadError, match="built for another model"):
        engine.reload_encoder(str(tmp_path / "proving-ground-encoder"))
    assert engine.embed(first)["embedding"] is None

    assert engine.reload_encoder(str(out)) == {"encoder_version": result["version"], "previous": None}
    answers = [engine.embed(str(pool / record["file"])) for record in manifest]
    assert {answer["format"] for answer in answers} == set(FORMATS)
    embeddings = torch.tensor([answer["embedding"] for answer in answers])  # (40, 384)
    assert all(answer["dim"] == 384 and answer["encoder_version"] == result["version"] for answer in answers)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(answers)), atol=1e-4, rtol=0)

    # "{concept} style" (MiniLM, the encoder's text space) finds a LoRA of that concept first: measured for 8 of 8
    # concepts on four data seeds, where chance is 1 in 8.
    concepts = sorted({record["concept"] for record in manifest})
    text = MiniLMTextEncoder(get_family("proving-ground").extra["text_max_tokens"], torch.device("cpu"), torch.float32)
    best = (text([f"{concept} style" for concept in concepts]).pooled.float() @ embeddings.T).argmax(dim=1)
    found = sum(manifest[int(index)]["concept"] == concept for index, concept in zip(best, concepts))
    assert found >= len(concepts) // 2, f"{found} of {len(concepts)} concepts found first"
