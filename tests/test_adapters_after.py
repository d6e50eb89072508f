"""After an adapter run (use_peft): `vtt merge`, `vtt predict` / `eval` / `report`, `vtt push` and `--merged`.

One adapter run per trainer (4 steps, an eval split scored at the end) is shared by the module; the seq2seq
run saves checkpoints and pushes itself to the stand-in Hub (tests/fake_hub.py) as it ends, and both runs are
merged once with `vtt merge RUN` (into RUN/merged).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CONFIGS, tiny_run
from fake_hub import FakeHub
from test_hub import TOKEN, assert_token_nowhere, digests, hub_env

from vtt.after.merge import RECORD, merge_run
from vtt.after.predict import trainer_of_model
from vtt.after.report import write_report
from vtt.models import adapters
from vtt.outputs import MARKER

AUTO = {"llava": "AutoModelForImageTextToText", "seq2seq": "AutoModelForSeq2SeqLM"}
ADAPTER_FILES = {adapters.ADAPTER_CONFIG, adapters.ADAPTER_WEIGHTS}
FULL_MODEL_FILES = {"config.json", "model.safetensors"}


def vtt(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vtt.cli", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, f"vtt {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(demo_inputs, held_out, tmp_path_factory) -> dict:
    """Each trainer's adapter run (4 steps, eval split generated at the end); the seq2seq one also saves
    checkpoints and pushes itself to a stand-in Hub, whose files are returned under "pushed"."""
    out = tmp_path_factory.mktemp("adapter-runs")
    runs, pushed = {}, {}
    for trainer, config in TINY_CONFIGS.items():
        runs[trainer] = out / trainer
        overrides = [*tiny_run(demo_inputs, trainer), "--use_peft", "true", "--output_dir", str(runs[trainer])]
        overrides += ["--max_steps", "4", "--eval_dataset", str(held_out), "--per_device_eval_batch_size", "3"]
        command = ["run", "--config", config, "--gpus", "1", *overrides]
        if trainer == "llava":
            vtt(*command)
            continue
        command += ["--max_target_length", "12", "--save_strategy", "steps", "--save_steps", "2"]
        with FakeHub(TOKEN) as hub:
            done = vtt(*command, "--push_to_hub", "true", env=hub_env(hub, out))
        assert_token_nowhere(done, runs[trainer])
        pushed = hub.files["model:tester/video-text-model"]
    return {"runs": runs, "pushed": pushed}


@pytest.fixture(scope="module")
def runs(trained) -> dict[str, Path]:
    return trained["runs"]


@pytest.fixture(scope="module")
def merged(runs) -> dict[str, Path]:
    """`vtt merge RUN` for each run: RUN/merged."""
    for run in runs.values():
        done = vtt("merge", str(run))
        assert f"-> {run / 'merged'}" in done.stdout
    return {trainer: run / "merged" for trainer, run in runs.items()}


def fixed_input(trainer: str, merged_folder: Path, demo_inputs) -> dict:
    """One question (with a video frame for llava) through the merged folder's own tokenizer or processor."""
    from transformers import AutoProcessor, AutoTokenizer

    if trainer == "seq2seq":
        inputs = AutoTokenizer.from_pretrained(merged_folder)(["what colour is the shape"], return_tensors="pt")
        return {**inputs, "decoder_input_ids": torch.tensor([[2, 105, 7, 9, 11]])}
    from PIL import Image

    from vtt.data.video import Sampling, read_frames

    [frame] = read_frames(demo_inputs["manifest"].parent / "clip000.mp4", Sampling(num_frames=1))
    processor = AutoProcessor.from_pretrained(merged_folder)
    message = [{"role": "user", "content": [{"type": "text", "text": "which way?"}, {"type": "image"}]}]
    text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[Image.fromarray(frame)]], return_tensors="pt")
    assert "pixel_values" in inputs
    return dict(inputs)


# ---- vtt merge --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_merged_model_gives_the_adapter_models_logits_without_peft(runs, merged, demo_inputs, trainer):
    import transformers
    from peft import PeftModel

    auto = getattr(transformers, AUTO[trainer])
    folder = merged[trainer]
    names = {path.name for path in folder.iterdir()}
    assert names >= FULL_MODEL_FILES and not ADAPTER_FILES & names
    full = auto.from_pretrained(folder).eval()
    assert not isinstance(full, PeftModel) and not [name for name in full.state_dict() if "lora_" in name]
    with_adapter = adapters.load_trained(runs[trainer], trainer).eval()
    assert isinstance(with_adapter, PeftModel)
    base = auto.from_pretrained(adapters.base_of(runs[trainer])).eval()
    inputs = fixed_input(trainer, folder, demo_inputs)
    with torch.inference_mode():
        logits = {name: model(**inputs).logits for name, model in [("merged", full), ("adapter", with_adapter)]}
        logits["base"] = base(**inputs).logits
    torch.testing.assert_close(logits["merged"], logits["adapter"], rtol=1e-4, atol=1e-5)
    assert (logits["merged"] - logits["base"]).abs().max() > 1e-2, "the adapter changed nothing"
    record = json.loads((folder / RECORD).read_text())
    assert record["trainer"] == trainer and record["base"] == str(demo_inputs[trainer])
    assert json.loads((folder / MARKER).read_text())["command"] == "merge"
    assert (folder / "vtt-run.json").read_text() == (runs[trainer] / "vtt-run.json").read_text()
    assert not list(folder.parent.glob(".merged.*")), "a staging folder or lock was left behind"


@pytest.mark.slow
def test_merged_seq2seq_keeps_the_runs_generation_config(runs, merged):
    from transformers import GenerationConfig

    run_config = GenerationConfig.from_pretrained(runs["seq2seq"])
    assert run_config.forced_bos_token_id is not None  # the target language the trainer forced
    assert GenerationConfig.from_pretrained(merged["seq2seq"]).forced_bos_token_id == run_config.forced_bos_token_id


def test_merge_of_a_folder_without_an_adapter_names_it(demo_inputs, tmp_path):
    full = demo_inputs["seq2seq"]
    done = vtt("merge", str(full), check=False)
    assert done.returncode == 2
    assert f"{full}: holds a full model (config.json), no adapter (adapter_config.json)" in done.stderr
    assert not (full / "merged").exists()
    done = vtt("merge", str(tmp_path), "--out", str(tmp_path / "out"), check=False)
    assert done.returncode == 2
    assert f"{tmp_path}: holds no adapter (adapter_config.json): pass the output_dir of a run" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_merge_never_writes_over_its_inputs_or_a_folder_it_did_not_write(runs, demo_inputs, tmp_path):
    run = runs["seq2seq"]
    before = digests(run)
    for out, why in [
        (run, "which `vtt merge` reads"),
        (demo_inputs["seq2seq"], "which `vtt merge` reads"),
        (run.parent, "holds"),
    ]:
        done = vtt("merge", str(run), "--out", str(out), check=False)
        assert done.returncode == 2 and f"--out {out}: " in done.stderr and why in done.stderr, done.stderr
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    done = vtt("merge", str(run), "--out", str(foreign), check=False)
    assert done.returncode == 2 and "holds files that vtt did not write" in done.stderr
    assert (foreign / "todo.txt").read_text() == "mine"
    assert digests(run) == before


@pytest.mark.slow
def test_a_failed_merge_leaves_the_earlier_merge_whole_and_no_partial_folder(runs, merged, tmp_path, monkeypatch):
    import vtt.after.merge as merge_module

    out = tmp_path / "merged"
    shutil.copytree(merged["llava"], out)
    before = digests(out)

    def dies_half_way(folder, target, trainer):
        (Path(target) / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(merge_module.adapters, "merge", dies_half_way)
    with pytest.raises(RuntimeError, match="killed while writing"):
        merge_run(runs["llava"], out)
    assert digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ---- predict, eval, report ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_an_adapter_folder_is_known_by_its_trainer(runs, trainer, tmp_path):
    assert trainer_of_model(str(runs[trainer])) == trainer
    bare = tmp_path / "bare"  # an adapter without the run record: its base's config says it
    bare.mkdir()
    for name in ADAPTER_FILES:
        shutil.copy(runs[trainer] / name, bare / name)
    assert trainer_of_model(str(bare)) == trainer


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_end_of_training_eval_scores_an_adapter_run(runs, trainer):
    results = json.loads((runs[trainer] / "eval_generation.json").read_text())
    assert results["trainer"] == trainer
    assert results["metrics"]["samples"] == 3 and results["metrics"]["failed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_predict_on_an_adapter_run_and_on_its_merge_give_the_same_rows(runs, merged, held_out, trainer, tmp_path):
    rows = {}
    for name, model in [("adapter", runs[trainer]), ("merged", merged[trainer])]:
        out = tmp_path / f"{name}.jsonl"
        done = vtt(
            "predict", "--model", str(model), "--manifest", str(held_out), "--out", str(out), "--batch-size", "3"
        )
        assert f"3 prediction(s) from the {trainer} model {model}" in done.stdout
        rows[name] = read_jsonl(out)
    assert [row["id"] for row in rows["adapter"]] == ["clip000", "clip001", "clip002"]
    assert all(isinstance(row["prediction"], str) and "error" not in row for row in rows["adapter"])
    assert rows["adapter"] == read_jsonl(runs[trainer] / "eval_predictions.jsonl")  # as scored when training ended
    assert rows["merged"] == rows["adapter"]


@pytest.mark.slow
def test_eval_of_an_adapter_run_writes_metrics(runs, held_out, tmp_path):
    out = tmp_path / "eval.json"
    done = vtt("eval", "--model", str(runs["llava"]), "--data", str(held_out), "--out", str(out))
    results = json.loads(out.read_text())
    assert results["trainer"] == "llava" and results["model"] == str(runs["llava"])
    assert results["metrics"]["samples"] == 3 and results["metrics"]["failed"] == 0
    assert {"bleu", "chrf", "exact_match"} <= set(results["metrics"]) and "bleu" in done.stdout
    assert len(read_jsonl(tmp_path / "eval_predictions.jsonl")) == 3


@pytest.mark.slow
def test_report_of_an_adapter_run_says_it_holds_an_adapter(runs, tmp_path):
    html = write_report(runs["seq2seq"], tmp_path / "report.html").read_text()
    assert "LoRA r=16, alpha=32, only the adapter saved" in html
    assert "clip000" in html  # the end-of-training predictions


# ---- vtt push -----------------------------------------------------------------------------------------


def card_of(files: dict[str, bytes]) -> str:
    return files["README.md"].decode()


@pytest.mark.slow
def test_trainer_pushes_the_adapter_with_a_card_naming_its_base(trained, demo_inputs):
    uploaded = trained["pushed"]
    assert ADAPTER_FILES | {"tokenizer.json", "generation_config.json", "README.md"} <= set(uploaded)
    assert not FULL_MODEL_FILES & set(uploaded)
    assert not [name for name in uploaded if name.startswith("checkpoint-")]
    assert (trained["runs"]["seq2seq"] / "checkpoint-4" / adapters.ADAPTER_WEIGHTS).is_file()  # kept local
    card = card_of(uploaded)
    assert "library_name: peft" in card and "A LoRA adapter (peft), not a full model" in card
    assert f"the base model `{demo_inputs['seq2seq']}`" in card
    assert "use_peft: true" in card and "| train_loss |" in card


@pytest.mark.slow
def test_push_of_an_adapter_run_uploads_the_adapter_as_it_is(runs, merged, demo_inputs, tmp_path):
    folder = tmp_path / "llava-run"
    shutil.copytree(runs["llava"], folder)  # with its merged/ folder, which stays out of this push
    assert (folder / "merged" / "model.safetensors").is_file()
    assert "peft" in (folder / "README.md").read_text()  # peft's placeholder card
    with FakeHub(TOKEN) as hub:
        done = vtt("push", str(folder), "--repo-id", "tiny-llava-lora", env=hub_env(hub, tmp_path))
    uploaded = hub.files["model:tester/tiny-llava-lora"]
    assert ADAPTER_FILES | {"processor_config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= set(
        uploaded
    )
    assert uploaded[adapters.ADAPTER_WEIGHTS] == (folder / adapters.ADAPTER_WEIGHTS).read_bytes()
    assert not FULL_MODEL_FILES & set(uploaded)
    assert not [name for name in uploaded if name.startswith(("merged", "runs/"))]
    card = card_of(uploaded)
    assert "library_name: peft" in card and "A LoRA adapter (peft), not a full model" in card
    assert f"`{demo_inputs['llava']}`" in card and "PeftModel.from_pretrained(" in card
    assert "use_peft: true" in card and "| train_loss |" in card
    assert "[More Information Needed]" not in card  # peft's placeholder replaced
    assert_token_nowhere(done, folder)


@pytest.mark.slow
def test_push_merged_uploads_the_full_model_and_a_retry_reuses_the_merge(runs, demo_inputs, tmp_path):
    folder = tmp_path / "seq2seq-run"
    shutil.copytree(runs["seq2seq"], folder, ignore=shutil.ignore_patterns("merged"))
    adapter_record = (folder / "vtt-push.json").read_text()  # the trainer's push of the adapter
    with FakeHub(TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        done = vtt("push", str(folder), "--merged", "--repo-id", "tiny-nllb-merged", env=env)
        assert f"-> {folder / 'merged'}" in done.stdout
        uploaded = dict(hub.files["model:tester/tiny-nllb-merged"])
        merged_weights = (folder / "merged" / "model.safetensors").stat().st_mtime_ns
        again = vtt("push", str(folder), "--merged", env=env)  # the repo id recorded in RUN/merged
    assert FULL_MODEL_FILES | {"generation_config.json", "tokenizer.json", "README.md"} <= set(uploaded)
    assert not ADAPTER_FILES & set(uploaded)
    assert not [name for name in uploaded if name.startswith("checkpoint-") or name == RECORD]
    assert uploaded["model.safetensors"] == (folder / "merged" / "model.safetensors").read_bytes()
    card = card_of(uploaded)
    assert "library_name: transformers" in card and "merged into the base model's weights" in card
    assert f"`{demo_inputs['seq2seq']}`" in card and "| train_loss |" in card
    assert (folder / "vtt-push.json").read_text() == adapter_record  # the adapter's own push is untouched
    assert "is the merge of the adapter" in again.stdout and "kept" in again.stdout
    assert (folder / "merged" / "model.safetensors").stat().st_mtime_ns == merged_weights
    assert hub.calls("commit") == [200, 200]
    assert_token_nowhere(done, folder)


def test_push_merged_of_a_full_model_is_refused_by_name(demo_inputs, tmp_path):
    done = vtt("push", str(demo_inputs["seq2seq"]), "--merged", env=hub_env(None, tmp_path), check=False)
    assert done.returncode == 2
    assert f"{demo_inputs['seq2seq']}: holds a full model (config.json), no adapter" in done.stderr
