"""Cluster profiles: every shipped profile loads; bad keys, types and values are errors that name them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtt.cluster.profiles import load_profile, profile_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "jobs" / "clusters").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_profiles_include_local_ci_and_two_examples():
    names = {path.stem for path in SHIPPED}
    assert {"local", "ci"} <= names
    runtimes = {load_profile(path).container.runtime for path in SHIPPED}
    assert {"apptainer", "pyxis"} <= runtimes


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_profile_loads(path):
    profile = load_profile(path)
    assert profile.name == path.stem


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "partiton: gpu\ngpus_per_node: 4\n")
    with pytest.raises(ValueError, match=r"site.yaml: unknown key 'partiton': did you mean 'partition'\?"):
        load_profile(path)


def test_unknown_container_key_is_named(tmp_path):
    path = write(tmp_path, "gpus_per_node: 4\ncontainer:\n  runtime: apptainer\n  image: a.sif\n  bind: [x]\n")
    with pytest.raises(ValueError, match=r"unknown key 'container.bind': did you mean 'binds'\?"):
        load_profile(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "gpus_per_node: four\n")
    with pytest.raises(ValueError, match=r"gpus_per_node = 'four': must be a whole number"):
        load_profile(path)


def test_runtime_outside_choices_lists_them(tmp_path):
    path = write(tmp_path, "gpus_per_node: 4\ncontainer:\n  runtime: podman\n  image: x\n")
    with pytest.raises(ValueError, match=r"container.runtime = 'podman': choose one of none, apptainer, docker, pyxis"):
        load_profile(path)


def test_container_without_image_is_an_error(tmp_path):
    path = write(tmp_path, "gpus_per_node: 4\ncontainer:\n  runtime: pyxis\n")
    with pytest.raises(ValueError, match=r"container\.runtime is pyxis but container\.image is not set"):
        load_profile(path)


def test_slurm_profile_must_say_how_many_gpus_a_node_has(tmp_path):
    with pytest.raises(ValueError, match="gpus_per_node is missing"):
        load_profile(write(tmp_path, "partition: gpu\n"))


def test_secret_in_profile_env_is_refused(tmp_path):
    path = write(tmp_path, "gpus_per_node: 4\nenv:\n  HF_TOKEN: hf_abc\n")
    with pytest.raises(ValueError, match=r"env.HF_TOKEN looks like a secret: .* Export HF_TOKEN in the shell"):
        load_profile(path)


def test_newline_in_a_value_is_refused(tmp_path):
    # A newline would end a script line and start a command of its own.
    path = write(tmp_path, 'gpus_per_node: 4\npartition: "gpu\\ntouch pwned"\n')
    with pytest.raises(ValueError, match="partition = 'gpu\\\\ntouch pwned' holds a control character"):
        load_profile(path)


def test_local_profile_refuses_slurm_settings(tmp_path):
    path = write(tmp_path, "scheduler: local\npartition: gpu\n")
    with pytest.raises(ValueError, match=r"scheduler is local .* sets partition"):
        load_profile(path)


def test_profile_name_resolves_to_shipped_file():
    assert profile_path("ci").resolve() == (ROOT / "jobs" / "clusters" / "ci.yaml").resolve()
    assert load_profile(profile_path("ci")).gpus_per_node == 8


TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token, made up


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"env:\n  NCCL_DEBUG: WARN\n  HUB: {TOKEN}\n", "env.HUB"),  # a name that does not say "token"
        (f"sbatch_extra: ['--comment=pull with {TOKEN}']\n", "sbatch_extra[0]"),
        (f"container:\n  runtime: pyxis\n  image: 'https://user:{TOKEN}@hf.co/x.sqsh'\n", "container.image"),
        (f"description: {TOKEN}\n", "description"),
        (f"gpus_per_node_typo: {TOKEN}\n", "gpus_per_node_typo"),  # refused before the unknown key
    ],
)
def test_token_value_anywhere_in_a_profile_is_refused_masked(tmp_path, text, key):
    path = write(tmp_path, "gpus_per_node: 4\n" + text)
    with pytest.raises(ValueError) as raised:
        load_profile(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {key} (hf_…4567) holds what looks like a Hugging Face token"), message
    assert TOKEN not in message and "Export HF_TOKEN in the shell you submit from" in message


def test_a_short_hf_word_is_not_taken_for_a_token(tmp_path):
    profile = load_profile(write(tmp_path, "gpus_per_node: 4\nenv:\n  CACHE: /data/hf_cache_of_models\n"))
    assert profile.env == {"CACHE": "/data/hf_cache_of_models"}
