"""Publishing to the Hugging Face Hub: trained models, prepared datasets, and `vtt push`.

    vtt push outputs/runs/llava                                   # retry the upload a run printed
    vtt push data/prepared --repo-id me/video-text-dataset        # a folder made by `vtt prepare`
    vtt push outputs/runs/llava-lora --repo-id me/llava-lora      # an adapter run (use_peft): the adapter
    vtt push outputs/runs/llava-lora --merged --repo-id me/llava  # merged into its base first (vtt merge)

The trainers call plan_model_push() at start (the token is checked with the Hub's whoami before any
weights load) and push_model() after the final save; `vtt prepare --push-to-hub` calls push_dataset().
The token comes from HF_TOKEN or `hf auth login` (huggingface_hub.get_token), never from a config
file, and is scrubbed from every message printed here. Repos are private unless asked otherwise.
Uploads go through huggingface_hub's upload_folder (with hf_xet, a streamed pipeline that skips
what the Hub already holds when re-run) inside retries with exponential backoff on 429 and 5xx.
Every folder pushed gets a `vtt-push.json` (repo id, type, visibility: no secret) so that
`vtt push FOLDER` can retry the same upload later.

A run trained with `use_peft: true` is pushed as it is: its adapter, tokenizer or processor and a model
card that says it is an adapter and names its base (peft's placeholder card is replaced). `--merged`
pushes RUN/merged instead (vtt.after.merge: made, or remade when the adapter changed, before the upload):
a full model whose card names the base it was merged into. RUN/merged stays out of the adapter's push.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from vtt import collective
from vtt.after._compat import hub_network_errors
from vtt.after.merge import MERGED, check_adapter, default_out, merged_for
from vtt.after.merge import RECORD as MERGE_RECORD
from vtt.exits import Exit
from vtt.files import write_atomically
from vtt.models import adapters
from vtt.outputs import MARKER as OUTPUT_MARKER  # which command wrote the folder: local only

logger = logging.getLogger(__name__)

# Default repo names under $HF_USER_ID, as the seed named them.
MODEL_NAMES = {"llava": "llava-video-text-model", "seq2seq": "video-text-model"}
DATASET_NAMES = {"llava": "llava-video-text-dataset", "seq2seq": "video-text-dataset"}
RECORD = "vtt-push.json"
# Training checkpoints, logs and our records stay local; the final model at the top of the run folder goes up.
IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.log", RECORD, ".cache/**", OUTPUT_MARKER]
IGNORE += [MERGED, f"{MERGED}/**", MERGE_RECORD]  # RUN/merged goes up with --merged only; vtt merge's record
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class PushError(RuntimeError):
    """An upload that failed after its retries; the message ends with the command that retries it."""


@dataclass
class Target:
    """Where a folder goes on the Hub. Saved as vtt-push.json beside the folder's files."""

    repo_id: str
    repo_type: str = "model"
    private: bool = True


def token() -> str | None:
    """HF_TOKEN, else the token saved by `hf auth login`; None when there is neither."""
    from huggingface_hub import get_token

    return get_token()


def scrub(text: str, secret: str | None = None) -> str:
    """`text` with the token (given, or the one in effect) replaced by `***`."""
    secret = secret if secret is not None else token()
    return text.replace(secret, "***") if secret else text


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retryable(err: BaseException) -> bool:
    return _status(err) in RETRY_STATUS or isinstance(err, hub_network_errors())


def with_retries(action: Callable[[], Any], what: str, attempts: int = 6, base_delay: float = 2.0) -> Any:
    """`action()`, again after 2, 4, 8, ... s (or the server's Retry-After) while it fails with 429/5xx."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if attempt == attempts or not _retryable(err):
                raise
            delay = base_delay * 2 ** (attempt - 1)
            retry_after = getattr(getattr(err, "response", None), "headers", {}).get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, float(retry_after))
            delay = min(delay, 300.0)
            logger.warning(
                "%s: %s (attempt %d of %d); retrying in %.1f s",
                what,
                _status(err) or type(err).__name__,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def whoami(secret: str | None) -> str:
    """The Hub user name the token belongs to; a ValueError that says how to fix a missing or bad token."""
    if not secret:
        raise ValueError(
            "a push to the Hub is configured but no token was found: export HF_TOKEN=... or run "
            "`hf auth login` (a token is never read from a run config)"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return with_retries(lambda: HfApi(token=secret).whoami()["name"], "the Hub's whoami")
    except HfHubHTTPError as err:
        if _status(err) == 401:
            raise ValueError(
                "the Hub token (HF_TOKEN or `hf auth login`) was refused (401 Unauthorized): make a new one "
                "with write access at https://huggingface.co/settings/tokens"
            ) from None
        raise ValueError(f"could not check the Hub token: {scrub(str(err), secret)}") from None


def repo_id_for(explicit: str | None, default_name: str, user: str | None = None) -> str:
    """`explicit` when given (a bare name goes under the user), else `$HF_USER_ID/<default_name>`."""
    name = explicit or default_name
    if "/" in name:
        return name
    owner = os.environ.get("HF_USER_ID") or user
    if not owner:
        raise ValueError(f"cannot name the Hub repo for {name!r}: set HF_USER_ID or give a full id (owner/{name})")
    return f"{owner}/{name}"


def save_target(folder: str | Path, target: Target) -> None:
    write_atomically(Path(folder) / RECORD, json.dumps(asdict(target), indent=2) + "\n")


def load_target(folder: str | Path) -> Target | None:
    record = Path(folder) / RECORD
    return Target(**json.loads(record.read_text())) if record.is_file() else None


def retry_command(folder: str | Path) -> str:
    return f"vtt push {folder}"


def push_folder(
    folder: str | Path,
    target: Target,
    secret: str | None = None,
    commit_message: str = "Upload with vtt",
    attempts: int = 6,
    base_delay: float = 2.0,
) -> str:
    """Create the repo (if needed) and upload `folder` to it; returns the commit URL.

    Raises PushError (token scrubbed, retry command included) when the Hub still fails after the
    retries; the local folder is never modified beyond its vtt-push.json.
    """
    from huggingface_hub import HfApi

    secret = secret if secret is not None else token()
    folder = Path(folder)
    save_target(folder, target)
    api = HfApi(token=secret)
    try:
        with_retries(
            lambda: api.create_repo(target.repo_id, repo_type=target.repo_type, private=target.private, exist_ok=True),
            f"creating {target.repo_id}",
            attempts,
            base_delay,
        )
        commit = with_retries(
            lambda: api.upload_folder(
                repo_id=target.repo_id,
                repo_type=target.repo_type,
                folder_path=folder,
                commit_message=commit_message,
                ignore_patterns=list(IGNORE),
            ),
            f"uploading {folder} to {target.repo_id}",
            attempts,
            base_delay,
        )
    except Exception as err:
        raise PushError(
            f"the upload of {folder} to {target.repo_type} repo {target.repo_id} failed: "
            f"{scrub(f'{type(err).__name__}: {err}', secret)}\n"
            f"The files are intact in {folder}. Retry the upload with:\n    {retry_command(folder)}"
        ) from None
    return str(getattr(commit, "commit_url", commit))


def push_dataset(
    folder: str | Path,
    repo_id: str | None = None,
    *,
    trainer: str = "seq2seq",
    private: bool = True,
    attempts: int = 6,
    base_delay: float = 2.0,
) -> str:
    """Push a prepared dataset folder (`vtt prepare --push-to-hub [REPO]`); returns the commit URL.

    repo_id defaults to `$HF_USER_ID/<llava-video-text-dataset | video-text-dataset>` after the trainer.
    Raises ValueError for a missing/bad token, PushError when the upload fails after its retries.
    """
    secret = token()
    user = whoami(secret)
    target = Target(repo_id_for(repo_id, DATASET_NAMES[trainer], user), "dataset", private)
    return push_folder(folder, target, secret, "Upload dataset with vtt", attempts, base_delay)


# ---- the trainers' side ----------------------------------------------------------------------------


@dataclass
class ModelPush:
    """A push the trainers will make at the end: checked at start, made by rank 0 after the final save."""

    target: Target
    run_config: dict[str, Any]
    base_model: str
    trainer: str
    form: str = "model"  # "model" (full weights), "adapter" (peft's, on base_model), "merged" (adapter merged in)


def plan_model_push(command, run, training, trainer: str) -> ModelPush | None:
    """None when push_to_hub is off; else the checked push. Exits every rank (code 2) on a token problem.

    Turns the Trainer's own push_to_hub off: it would push every checkpoint without retries; vtt
    pushes once, after the final save.
    """
    if not training.push_to_hub:
        return None
    config = command.values()  # vtt.config.RunCommand: the run config as given, for the model card
    if config.get("hub_token") or getattr(training, "hub_token", None):
        _exit_all(
            "hub_token is set in the run config or on the command line: remove it and export HF_TOKEN "
            "(or run `hf auth login`) instead, so the token never lands in a file or a log",
            Exit.BAD_INPUT,
        )
    private = True if training.hub_private_repo is None else bool(training.hub_private_repo)

    def check() -> str:
        return repo_id_for(training.hub_model_id or run.hub_model_id_suffix, MODEL_NAMES[trainer], whoami(token()))

    try:
        repo_id = collective.from_rank0(check)
    except (ValueError, RuntimeError) as err:
        _exit_all(f"{scrub(str(err))} (nothing was trained)", Exit.BAD_INPUT)
    training.push_to_hub = False
    if collective.is_rank0():
        print(f"vtt hub: the final model will be pushed to {repo_id} ({'private' if private else 'public'})")
    return ModelPush(Target(repo_id, "model", private), config, run.model_name_or_path, trainer)


def final_metrics(log_history: list[dict[str, Any]], train_metrics: dict[str, Any]) -> dict[str, Any]:
    """The train result's metrics and the last evaluation's, if the run evaluated."""
    metrics = dict(train_metrics)
    evaluations = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    if evaluations:
        metrics.update({k: v for k, v in evaluations[-1].items() if k.startswith("eval_")})
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if losses:
        metrics["final_logged_loss"] = losses[-1]
    return metrics


def card_intro(push: ModelPush) -> str:
    """The card's first paragraph: what the repo holds, and the base it needs or came from."""
    made = f"`{push.base_model}` by vtt's `{push.trainer}` trainer"
    if push.form == "adapter":
        load = f"{adapters.AUTO_CLASSES[push.trainer]}.from_pretrained({push.base_model!r})"
        return (
            f"A LoRA adapter (peft), not a full model: fine-tuned on the base model {made}. Load the base and apply "
            f"it, `PeftModel.from_pretrained({load}, {push.target.repo_id!r})`, or merge it into a full model "
            "with `vtt merge RUN` (`vtt push RUN --merged` uploads that)."
        )
    if push.form == "merged":
        return (
            f"Fine-tuned from {made} as a LoRA adapter, merged into the base model's weights (`vtt merge`): "
            "a full model, loaded with `from_pretrained`, no peft needed."
        )
    return f"Fine-tuned from {made}."


def model_card(push: ModelPush, data: dict[str, Any], metrics: dict[str, Any]) -> str:
    """README.md for the model repo: metadata, what it holds (a model, an adapter and its base, a merged adapter),
    the run config, the data and the final metrics (each section when there is something to show)."""
    from huggingface_hub import ModelCard, ModelCardData

    is_hub_id = not Path(push.base_model).exists() and push.base_model.count("/") == 1
    adapter = push.form == "adapter"
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        tags=["vtt", "video-text", push.trainer, *(["lora"] if push.form != "model" else [])],
        base_model=push.base_model if is_hub_id else None,
        base_model_relation="adapter" if adapter and is_hub_id else None,
    )
    config = {k: v for k, v in push.run_config.items() if "token" not in k}
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    body = f"# {push.target.repo_id.split('/')[-1]}\n\n{card_intro(push)}\n\n"
    if config:
        body += f"## Run config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n\n"
    if data:
        body += f"## Data\n\n```yaml\n{yaml.safe_dump(data, sort_keys=False)}```\n\n"
    if rows:
        body += f"## Final metrics\n\n| metric | value |\n|---|---|\n{rows}\n"
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def push_model(push: ModelPush | None, output_dir: str | Path, data: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Rank 0 writes the model card and uploads `output_dir`; the other ranks wait for the outcome.

    When the upload fails after its retries, every rank exits with Exit.PUSH_FAILED and rank 0 prints
    the command that retries it (the local model stays as saved).
    """
    if push is None:
        return
    if adapters.is_adapter(output_dir):  # a use_peft run saved its adapter: the card says so, and names the base
        push = replace(push, form="adapter")

    def upload() -> str:
        secret = token()
        text = scrub(model_card(push, data, metrics), secret)
        write_atomically(Path(output_dir) / "README.md", text)
        try:
            return push_folder(output_dir, push.target, secret, f"Upload {push.trainer} model with vtt")
        except PushError as err:
            return f"error: {err}"

    outcome = collective.from_rank0(upload)
    if outcome.startswith("error: "):
        _exit_all(f"vtt hub: {outcome[len('error: ') :]}", Exit.PUSH_FAILED)
    if collective.is_rank0():
        print(f"vtt hub: pushed {output_dir} to {push.target.repo_id}: {outcome}", flush=True)


def _exit_all(message: str, code: int) -> None:
    """Rank 0 prints `message`; every rank exits with `code` (each rank reaches this with the same outcome)."""
    if collective.is_rank0():
        print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


# ---- `vtt push` ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, help="a run folder (its final model or adapter) or a folder made by `vtt prepare`"
    )
    parser.add_argument(
        "--merged", action="store_true", help=f"an adapter run: push FOLDER/{MERGED}, its merge (made when needed)"
    )
    parser.add_argument("--repo-id", help="owner/name or name (under $HF_USER_ID); default: the folder's last push")
    parser.add_argument("--repo-type", choices=["model", "dataset"], help="default: dataset for a prepared folder")
    parser.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    parser.add_argument("--retries", type=int, default=6, help="attempts per request on 429/5xx (default 6)")
    parser.add_argument("--backoff", type=float, default=2.0, help="first wait between attempts, doubled each time")


def _kind_of(folder: Path) -> str:
    from vtt.data.datasets import is_prepared

    if is_prepared(folder):
        return "dataset"
    if (folder / "config.json").is_file() or adapters.is_adapter(folder):
        return "model"
    raise ValueError(
        f"{folder}: neither a saved model (config.json), an adapter ({adapters.ADAPTER_CONFIG}) nor a prepared "
        "dataset (dataset_info.json)"
    )


def write_card(folder: Path, target: Target) -> None:
    """The card of an adapter run, or of its merge, from the run's records: written before `vtt push` uploads the
    folder unless it holds a vtt card already (the trainer's). Other folders are pushed with what they hold."""
    from huggingface_hub import metadata_load

    from vtt.after.predict import trainer_of_model
    from vtt.after.report import card_facts, read_json

    readme = folder / "README.md"
    if readme.is_file() and "vtt" in ((metadata_load(readme) or {}).get("tags") or []):
        return
    if adapters.is_adapter(folder):  # peft's save_pretrained left a placeholder card (its base a local path)
        run_dir, base, trainer, form = folder, adapters.base_of(folder), trainer_of_model(str(folder)), "adapter"
    elif (folder / MERGE_RECORD).is_file():
        merged = read_json(folder / MERGE_RECORD)
        run_dir, base, trainer, form = Path(merged["adapter"]), merged["base"], merged["trainer"], "merged"
    else:
        return
    config, data, history = card_facts(run_dir)
    final = next((entry for entry in reversed(history) if "train_loss" in entry), {})
    metrics = final_metrics(history, {key: value for key, value in final.items() if key != "step"})
    write_atomically(readme, scrub(model_card(ModelPush(target, config, base, trainer, form), data, metrics)))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    run_dir = folder = args.folder
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if args.merged:
        if args.repo_type == "dataset":
            raise ValueError("--merged pushes a model: leave out --repo-type dataset")
        folder = default_out(check_adapter(run_dir))  # merged below, once the token and the repo are known
    saved = load_target(folder)
    repo_type = args.repo_type or (saved.repo_type if saved else "model" if args.merged else _kind_of(folder))
    secret = token()
    user = whoami(secret)
    if args.repo_id or not saved:
        default = (DATASET_NAMES if repo_type == "dataset" else MODEL_NAMES)["seq2seq"]
        if not args.repo_id:
            raise ValueError(f"{folder} has no {RECORD} from an earlier push: give --repo-id (e.g. {default})")
        target = Target(repo_id_for(args.repo_id, default, user), repo_type, not args.public)
    else:
        target = Target(saved.repo_id, repo_type, saved.private and not args.public)
    if args.merged:
        folder = merged_for(run_dir)
    if repo_type == "model":
        write_card(folder, target)
    try:
        url = push_folder(folder, target, secret, "Upload with vtt push", args.retries, args.backoff)
    except PushError as err:
        print(f"vtt push: {err}", file=sys.stderr)
        return Exit.PUSH_FAILED
    print(f"vtt push: {folder} -> {target.repo_type} repo {target.repo_id}: {url}")
    return 0
