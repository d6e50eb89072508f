"""Rendering job scripts: golden copies of the shipped profiles, shellcheck, quoting, and preflight errors.

Regenerate the golden copies after an intended template or profile change, then review the diff:

    VTT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtt.cluster.jobs import preflight, quote_keeping_variables, render, submit, write_script
from vtt.cluster.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
SHIPPED = sorted((ROOT / "jobs" / "clusters").glob("*.yaml"))


@pytest.fixture(autouse=True)
def in_repository(monkeypatch):
    # Run configs name deepspeed/zero*.json relative to the repository, as jobs do.
    monkeypatch.chdir(ROOT)


def shipped_job(path: Path):
    """The golden case of a shipped profile: jobs/llava.yaml on all its GPUs and its default nodes."""
    profile = load_profile(Path("jobs/clusters") / path.name)
    return preflight(profile, "jobs/llava.yaml", profile.gpus_per_node or 1)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_rendering_of_shipped_profile_matches_golden_copy(path):
    text = render(shipped_job(path))
    golden = GOLDEN / f"{path.stem}.sh"
    if os.environ.get("VTT_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden copy {golden}: run VTT_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{path.stem} renders differently from {golden} (regenerate if intended)"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_rendered_script_passes_shellcheck(path, tmp_path):
    script = write_script(render(shipped_job(path)), tmp_path / f"{path.stem}.sh")
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_multi_node_launch_is_ssh_free_and_takes_counts_from_slurm():
    text = render(shipped_job(ROOT / "jobs/clusters/example-pyxis.yaml"))
    assert "#SBATCH --nodes=2" in text
    assert '--no_ssh --node_rank="$SLURM_NODEID"' in text
    assert 'srun --kill-on-bad-exit=1 --wait=60 --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1' in text
    assert 'GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:?' in text
    assert "--num_gpus" not in text and "--num_nodes" not in text  # never typed twice: the hostfile says it


def test_each_gres_style_asks_for_gpus_its_own_way():
    apptainer = render(shipped_job(ROOT / "jobs/clusters/example-apptainer-ib.yaml"))
    pyxis = render(shipped_job(ROOT / "jobs/clusters/example-pyxis.yaml"))
    assert "#SBATCH --gres=gpu:h100:4\n" in apptainer
    assert "#SBATCH --gpus-per-node=h100:8\n" in pyxis


def test_offline_profile_sets_hf_offline_variables():
    text = render(shipped_job(ROOT / "jobs/clusters/example-apptainer-ib.yaml"))
    assert "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1" in text
    assert "HF_HUB_OFFLINE" not in render(shipped_job(ROOT / "jobs/clusters/example-pyxis.yaml"))


def test_docker_runtime_runs_every_node_in_the_image(tmp_path):
    path = tmp_path / "docker.yaml"
    path.write_text("gpus_per_node: 2\ncontainer:\n  runtime: docker\n  image: vtt:latest\n  binds: [/data:/data]\n")
    text = render(preflight(load_profile(path), "jobs/tiny-llava.yaml", 2))
    assert "docker run --rm --gpus all --network host" in text
    assert "-e SLURM_NODEID" in text and "-e HF_TOKEN" in text and "-v /data:/data" in text
    script = write_script(text, tmp_path / "docker.sh")
    assert subprocess.run(["shellcheck", str(script)], capture_output=True).returncode == 0


def test_local_profile_reuses_vtt_run():
    text = render(shipped_job(ROOT / "jobs/clusters/local.yaml"))
    assert "python3 -m vtt.cli run --config jobs/llava.yaml --gpus 1\n" in text
    assert "srun" not in text and "#SBATCH" not in text


def test_values_are_quoted_and_only_variable_references_expand():
    assert quote_keeping_variables("/scratch/$USER/x y") == "/scratch/\"${USER}\"'/x y'"
    assert quote_keeping_variables("$(id)") == "'$(id)'"
    assert quote_keeping_variables("x; touch pwned") == "'x; touch pwned'"
    assert quote_keeping_variables("`id`") == "'`id`'"


def test_hostile_profile_values_stay_inert_when_the_script_runs(tmp_path):
    # The local profile's script runs with bash here: every hostile value must arrive as plain text.
    pwned = tmp_path / "pwned"
    path = tmp_path / "hostile.yaml"
    path.write_text(
        "scheduler: local\n"
        f"python: '{sys.executable}'\n"
        f"hf_home: '{tmp_path}/hf; touch {pwned}-hf'\n"
        f"env:\n  A: 'x; touch {pwned}-a'\n  B: '$(touch {pwned}-b)'\n  C: '`touch {pwned}-c`'\n"
    )
    text = render(preflight(load_profile(path), "jobs/tiny-llava.yaml", 1, overrides=["--run_name", "$(id)"]))
    # Run everything the script sets up, then print the values instead of training.
    setup = text.split("\npython3")[0].split(f"\n{sys.executable}")[0]
    probe = write_script(setup + '\nprintf "%s\\n" "$HF_HOME" "$A" "$B" "$C"\n', tmp_path / "probe.sh")
    done = subprocess.run(["bash", str(probe)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:5] == [
        f"{tmp_path}/hf; touch {pwned}-hf",
        f"x; touch {pwned}-a",
        f"$(touch {pwned}-b)",
        f"`touch {pwned}-c`",
    ]
    assert "--run_name '$(id)'" in text
    assert not list(tmp_path.glob("pwned*"))


def test_preflight_refuses_more_gpus_per_node_than_the_profile_has():
    with pytest.raises(ValueError, match=r"ci.yaml: gpus_per_node is 8, but the job asks for 9 GPUs per node"):
        preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 9)


def test_preflight_refuses_a_global_batch_that_does_not_divide_over_nodes_times_gpus():
    # tiny-llava: global_batch_size 4, micro batch 2: 3 nodes x 1 GPU cannot make it.
    with pytest.raises(ValueError, match=r"global_batch_size=4 is not a multiple of .* world size 3"):
        preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 1, nodes=3)


def test_preflight_refuses_unknown_run_config_key():
    with pytest.raises(ValueError, match="--learnig_rate"):
        preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 1, overrides=["--learnig_rate", "1"])


def test_preflight_keeps_hub_token_out_of_scripts():
    with pytest.raises(ValueError, match="--hub_token looks like a secret"):
        preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 1, overrides=["--hub_token", "hf_x"])


def test_preflight_takes_token_counts_for_what_they_are():
    """A name that holds "token" as part of a word is a count, not a secret: the job keeps it."""
    overrides = ["--max_visual_tokens", "4096", "--max_tokens_per_batch", "20000"]
    script = render(preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 1, overrides=overrides))
    assert "--max_tokens_per_batch 20000" in script and "--max_visual_tokens 4096" in script


def test_submit_without_sbatch_on_path_says_so(tmp_path, monkeypatch):
    job = preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-llava.yaml", 1)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="sbatch is not on PATH: submit from a login node"):
        submit(job, tmp_path / "job.sh")


def test_render_command_writes_nothing_when_preflight_fails(tmp_path):
    out = tmp_path / "job.sh"
    command = [sys.executable, "-m", "vtt.cli", "render", "--cluster", "ci", "--config", "jobs/tiny-llava.yaml"]
    done = subprocess.run([*command, "--gpus", "9", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "vtt render: error: jobs/clusters/ci.yaml: gpus_per_node is 8" in done.stderr
    assert not out.exists()


TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token, made up


@pytest.mark.parametrize(
    ("text", "key"),
    [(f"env:\n  HF_TOKEN: {TOKEN}\n", "env.HF_TOKEN"), (f"sbatch_extra: ['--comment={TOKEN}']\n", "sbatch_extra[0]")],
)
def test_render_refuses_a_profile_holding_a_token_and_writes_no_script(tmp_path, text, key):
    profile = tmp_path / "site.yaml"
    profile.write_text("gpus_per_node: 2\n" + text)
    out = tmp_path / "job.sh"
    command = [sys.executable, "-m", "vtt.cli", "render", "--cluster", str(profile), "--config", "jobs/tiny-llava.yaml"]
    done = subprocess.run([*command, "--gpus", "1", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"vtt render: error: {profile}: {key} (hf_…4567) holds what looks like a Hugging")
    assert TOKEN not in done.stdout + done.stderr
    assert not out.exists()


def test_render_works_from_any_folder_with_the_template_and_deepspeed_files_shipped_in_vtt(tmp_path):
    """A user's own folder holds only their run config: the template comes from the package, the profile and the
    DeepSpeed file the config names from vtt's install."""
    (tmp_path / "my-run.yaml").write_text((ROOT / "jobs" / "tiny-llava.yaml").read_text())
    vtt = Path(sys.executable).with_name("vtt")
    command = [str(vtt), "render", "--cluster", "ci", "--config", "my-run.yaml", "--gpus", "2", "-o", "out/"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script = tmp_path / done.stdout.strip().splitlines()[-1]
    assert script.is_file() and "--config my-run.yaml" in script.read_text()
