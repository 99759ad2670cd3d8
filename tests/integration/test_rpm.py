"""The RPM packaging, built for real: rpm/build.sh makes both source RPMs and the binary cortex RPM.

Checked: the SRPMs' contents, the binary RPM's files with their modes, owners and %config flags,
its dependencies (none generated from the bundled virtualenv), its payload (final paths only, the
configs as in conf/), the packaged gateway actually serving, the scriptlets' shell syntax, and the
neuron spec's GPU variants (parsed, not built: that compiles llama.cpp). Independent of rpmbuild:
the systemd units under `systemd-analyze verify` (against a temporary root, so the ExecStart
binaries exist), the sysusers.d files under `systemd-sysusers --root`, and the firewalld services.
"""

from __future__ import annotations

import io
import marshal
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # rpmbuild and packaged processes

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
VENV = "/usr/lib/helexa/cortex"
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Built:
    topdir: Path
    cortex_rpm: Path
    cortex_srpm: Path
    neuron_srpm: Path


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**env, "LC_ALL": "C"}


def rpm_query(*args: str | Path) -> str:
    proc = subprocess.run(
        ["rpm", *map(str, args)], capture_output=True, text=True, check=True, env=clean_env()
    )
    return proc.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild not installed (CI installs Debian's rpm)")
    topdir = tmp_path_factory.mktemp("rpmbuild")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "rpm" / "build.sh"), str(topdir)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env=clean_env(),
    )
    (topdir / "build.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"rpm/build.sh failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    print(f"rpm/build.sh took {time.monotonic() - started:.0f}s")
    rpms = list((topdir / "RPMS").glob(f"*/cortex-{VERSION}-*.rpm"))
    assert len(rpms) == 1, rpms
    return Built(
        topdir=topdir,
        cortex_rpm=rpms[0],
        cortex_srpm=next((topdir / "SRPMS").glob(f"cortex-{VERSION}-*.src.rpm")),
        neuron_srpm=next((topdir / "SRPMS").glob(f"helexa-neuron-{VERSION}-*.src.rpm")),
    )


@pytest.fixture(scope="module")
def payload(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The binary RPM's files unpacked into a temporary root."""
    root = tmp_path_factory.mktemp("payload")
    with built.cortex_rpm.open("rb") as rpm:
        archive = subprocess.run(
            ["rpm2archive", "-"], stdin=rpm, capture_output=True, check=True
        ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(root, filter="fully_trusted")
        else:  # Python without extraction filters
            tar.extractall(root)
    return root


def test_both_source_rpms(built: Built) -> None:
    cortex = rpm_query("-qlp", built.cortex_srpm).split()
    assert set(cortex) == {"cortex.spec", f"helexa-cortex-{VERSION}.tar.gz", "cortex.sysusers"}
    neuron = rpm_query("-qlp", built.neuron_srpm).split()
    assert set(neuron) == {
        "helexa-neuron.spec",
        f"helexa-cortex-{VERSION}.tar.gz",
        "neuron.sysusers",
    }
    with tarfile.open(built.topdir / "SOURCES" / f"helexa-cortex-{VERSION}.tar.gz") as tar:
        names = set(tar.getnames())
    top = f"helexa-cortex-{VERSION}"
    for path in ("pyproject.toml", "cortex/cli.py", "neuron/cli.py", "rpm/cortex.spec"):
        assert f"{top}/{path}" in names
    assert not any("/.venv/" in name or "/.git/" in name for name in names)


def test_binary_rpm_files_modes_and_configs(built: Built) -> None:
    fields = ("FILEMODES:perms", "FILEUSERNAME", "FILEGROUPNAME", "FILEFLAGS:fflags", "FILENAMES")
    query = "[" + "|".join(f"%{{{field}}}" for field in fields) + "\n]"
    files = {}
    for line in rpm_query("-qp", "--qf", query, built.cortex_rpm).splitlines():
        perms, user, group, flags, path = line.split("|", 4)
        files[path] = (perms, user, group, flags)
    assert set(files) == set(rpm_query("-qlp", built.cortex_rpm).splitlines())
    expected = {
        "/usr/bin/cortex": ("lrwxrwxrwx", "root", "root", ""),
        f"{VENV}/bin/cortex": ("-rwxr-xr-x", "root", "root", ""),
        f"{VENV}/bin/python": ("lrwxrwxrwx", "root", "root", ""),
        f"{VENV}/pyvenv.cfg": ("-rw-r--r--", "root", "root", ""),
        "/usr/lib/systemd/system/cortex.service": ("-rw-r--r--", "root", "root", ""),
        "/usr/lib/sysusers.d/cortex.conf": ("-rw-r--r--", "root", "root", ""),
        "/usr/lib/firewalld/services/cortex.xml": ("-rw-r--r--", "root", "root", ""),
        "/etc/cortex": ("drwxrwx--T", "root", "cortex", ""),
        "/etc/cortex/cortex.toml": ("-rw-r-----", "root", "cortex", "cn"),
        "/etc/cortex/models.toml": ("-rw-r-----", "cortex", "cortex", "cn"),
        "/var/lib/cortex": ("drwxr-x---", "cortex", "cortex", ""),
    }
    for path, want in expected.items():
        assert files.get(path) == want, path
    site = f"{VENV}/lib/python{sys.version_info[0]}."
    assert any(p.startswith(site) and p.endswith("/site-packages/cortex/cli.py") for p in files)
    assert any(p.endswith("/site-packages/sanic/__init__.py") for p in files)
    assert any("/cortex/__pycache__/cli.cpython-" in p for p in files)
    # No installer and no neuron in the gateway's venv; nothing names the build tree.
    for absent in (f"{VENV}/bin/pip", f"{VENV}/bin/neuron"):
        assert absent not in files
    assert not [p for p in files if "BUILDROOT" in p or "/.build-id/" in p]
    assert rpm_query("-qcp", built.cortex_rpm).split() == [
        "/etc/cortex/cortex.toml",
        "/etc/cortex/models.toml",
    ]
    links = rpm_query("-qp", "--qf", "[%{FILENAMES} %{FILELINKTOS}\n]", built.cortex_rpm)
    assert "/usr/bin/cortex ../lib/helexa/cortex/bin/cortex" in links.splitlines()


def test_dependencies_come_from_the_spec_not_the_venv(built: Built) -> None:
    requires = rpm_query("-qp", "--requires", built.cortex_rpm).splitlines()
    interpreters = [r for r in requires if r.startswith("/usr/bin/python3.")]
    assert len(interpreters) == 1, requires
    assert "firewalld-filesystem" in requires
    generated = [r for r in requires if "dist(" in r or ".so" in r or r.startswith(VENV)]
    assert generated == []
    provides = rpm_query("-qp", "--provides", built.cortex_rpm).splitlines()
    assert [p for p in provides if "dist(" in p or ".so" in p] == []


def test_payload_has_final_paths_and_the_example_configs(payload: Path) -> None:
    venv = payload / VENV.lstrip("/")
    assert (venv / "bin" / "cortex").read_text().startswith(f"#!{VENV}/bin/python\n")
    assert f"VIRTUAL_ENV={VENV}\n" in (venv / "bin" / "activate").read_text().replace("'", "")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    for path in payload.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"BUILDROOT" not in path.read_bytes(), path
    pyc = next(venv.glob("lib/python3.*/site-packages/cortex/__pycache__/config.cpython-*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename.startswith(f"{VENV}/lib/python3.")
    etc = payload / "etc" / "cortex"
    assert (etc / "cortex.toml").read_text() == (CONF / "cortex.example.toml").read_text()
    assert (etc / "models.toml").read_text() == (CONF / "models.example.toml").read_text()
    for name in ("systemd/cortex.service", "sysusers/cortex.conf", "firewalld/cortex.xml"):
        installed = {
            "systemd": "usr/lib/systemd/system",
            "sysusers": "usr/lib/sysusers.d",
            "firewalld": "usr/lib/firewalld/services",
        }[name.split("/")[0]]
        assert (payload / installed / Path(name).name).read_bytes() == (CONF / name).read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_packaged_gateway_serves(payload: Path, tmp_path: Path) -> None:
    """The venv as packaged (its own python, its own site-packages) runs `cortex serve`."""
    python = payload / VENV.lstrip("/") / "bin" / "python"
    where = subprocess.run(
        [python, "-I", "-c", "import cortex, sanic; print(cortex.__file__, sanic.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.split()
    assert all(path.startswith(str(payload)) for path in where), where
    port = free_port()
    config = (payload / "etc" / "cortex" / "cortex.toml").read_text()
    config = config.replace('"0.0.0.0:31313"', f'"127.0.0.1:{port}"')
    config = config.replace('"0.0.0.0:31314"', '""')
    config = config.replace('"http://127.0.0.1:13131"', f'"http://127.0.0.1:{free_port()}"')
    (tmp_path / "cortex.toml").write_text(config)
    shutil.copy(payload / "etc" / "cortex" / "models.toml", tmp_path / "models.toml")
    log = (tmp_path / "cortex.log").open("wb")
    proc = subprocess.Popen(
        [python, "-I", "-m", "cortex.cli", "serve", "--config", tmp_path / "cortex.toml"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "cortex.log").read_text()[-3000:]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the packaged gateway did not start"
                time.sleep(0.2)
        assert response.status_code == 200
        assert {m["id"] for m in response.json()["data"]} >= {"qwen2.5-coder-7b"}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_scriptlets_are_valid_shell(built: Built) -> None:
    scripts = {
        tag: rpm_query("-qp", "--qf", f"%{{{tag}}}", built.cortex_rpm)
        for tag in ("PREIN", "POSTIN", "PREUN", "POSTUN")
    }
    assert "systemd-sysusers" in scripts["PREIN"] and "u cortex" in scripts["PREIN"]
    assert "cortex.service" in scripts["POSTIN"] and "cortex.service" in scripts["PREUN"]
    assert "try-restart" in scripts["POSTUN"] or "cortex.service" in scripts["POSTUN"]
    for tag, script in scripts.items():
        check = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, f"{tag}: {check.stderr}\n{script}"


NEURON_VARIANTS = {
    "ampere": "80;86",
    "ada": "89",
    "hopper": "90",
    "blackwell": "100;120",
}


def rpmspec(*args: str, sourcedir: Path) -> str:
    proc = subprocess.run(
        ["rpmspec", "--define", f"_sourcedir {sourcedir}", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def sourcedir(tmp_path: Path) -> Path:
    if shutil.which("rpmspec") is None:
        pytest.skip("rpmbuild not installed (CI installs Debian's rpm)")
    shutil.copy(CONF / "sysusers" / "neuron.conf", tmp_path / "neuron.sysusers")
    return tmp_path


@pytest.mark.parametrize("gpu_arch", [*NEURON_VARIANTS, "cpu"])
def test_neuron_spec_variants(gpu_arch: str, sourcedir: Path) -> None:
    spec = str(ROOT / "rpm" / "helexa-neuron.spec")
    define = ["--define", f"gpu_arch {gpu_arch}"]
    names = rpmspec("-q", *define, "--qf", "%{name}\n", spec, sourcedir=sourcedir).split()
    assert names == ["helexa-neuron", f"helexa-neuron-{gpu_arch}"]
    parsed = rpmspec("-P", *define, spec, sourcedir=sourcedir)
    (cmake_args,) = [line for line in parsed.splitlines() if "export CMAKE_ARGS=" in line]
    if gpu_arch == "cpu":
        assert "-DGGML_CUDA=off" in cmake_args and "CUDA_ARCHITECTURES" not in cmake_args
        assert "libcuda.so.1" not in parsed
    else:
        assert "-DGGML_CUDA=on" in cmake_args
        assert f"-DCMAKE_CUDA_ARCHITECTURES={NEURON_VARIANTS[gpu_arch]} " in cmake_args
        assert "Requires:       libcuda.so.1()(64bit)" in parsed
    assert "-DGGML_NATIVE=off" in cmake_args
    assert "u neuron" in parsed and "m neuron video" in parsed
    assert "%config(noreplace) %attr(0640,root,neuron) /etc/neuron/neuron.toml" in parsed


def test_neuron_spec_custom_and_unknown_arch(sourcedir: Path) -> None:
    spec = str(ROOT / "rpm" / "helexa-neuron.spec")
    parsed = rpmspec(
        "-P", "--define", "gpu_arch turing", "--define", "cuda_arch 75", spec, sourcedir=sourcedir
    )
    assert "-DCMAKE_CUDA_ARCHITECTURES=75 " in parsed
    cpu = rpmspec("-q", "--without", "cuda", "--qf", "%{name}\n", spec, sourcedir=sourcedir)
    assert cpu.split() == ["helexa-neuron", "helexa-neuron-cpu"]
    proc = subprocess.run(
        ["rpmspec", "-P", "--define", "gpu_arch pascal", spec], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "unknown gpu_arch pascal" in proc.stderr


def systemd_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: the host's units (targets the units refer to)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


def verify_units(root: Path, *units: str) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    # Unknown or misspelt settings are only warnings: any output at all is a failure.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        proc.stdout + proc.stderr
    )


def install_units(root: Path) -> None:
    units = root / "usr/lib/systemd/system"
    for unit in ("cortex.service", "neuron.service"):
        shutil.copy(CONF / "systemd" / unit, units / unit)
    dropins = root / "etc/systemd/system/neuron.service.d"
    dropins.mkdir(parents=True)
    shutil.copy(CONF / "systemd/neuron.service.d/hf-cache.conf.example", dropins / "hf-cache.conf")


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze not installed")
    return path


def test_units_verify_with_stub_binaries(systemd_analyze: str, tmp_path: Path) -> None:
    root = systemd_root(tmp_path)
    install_units(root)
    for program in ("cortex/bin/cortex", "neuron/bin/neuron"):
        stub = root / "usr/lib/helexa" / program
        stub.parent.mkdir(parents=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    verify_units(root, "cortex.service", "neuron.service")
    # The check is real: a missing ExecStart binary fails it.
    (root / "usr/lib/helexa/neuron/bin/neuron").unlink()
    with pytest.raises(AssertionError, match="not executable"):
        verify_units(root, "neuron.service")


def test_cortex_unit_verifies_against_the_packaged_venv(
    systemd_analyze: str, payload: Path, tmp_path: Path
) -> None:
    root = systemd_root(tmp_path)
    shutil.copytree(payload, root, symlinks=True, dirs_exist_ok=True)
    verify_units(root, "cortex.service")


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (CONF / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_settings_that_matter() -> None:
    cortex, neuron = unit_settings("cortex.service"), unit_settings("neuron.service")
    assert cortex["ExecStart"] == [f"{VENV}/bin/cortex serve --config /etc/cortex/cortex.toml"]
    assert neuron["ExecStart"] == [
        "/usr/lib/helexa/neuron/bin/neuron --config /etc/neuron/neuron.toml"
    ]
    for unit in (cortex, neuron):
        assert unit["Restart"] == ["on-failure"] and unit["KillSignal"] == ["SIGTERM"]
        assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
        assert unit["ProtectHome"] == ["yes"] and unit["PrivateTmp"] == ["yes"]
    # The GPUs stay reachable: no private /dev, the NVIDIA device groups allowed.
    assert neuron["PrivateDevices"] == ["no"] and neuron["DevicePolicy"] == ["closed"]
    assert neuron["DeviceAllow"] == ["char-nvidia* rw"]
    assert "HF_HOME=/var/lib/neuron/hf" in neuron["Environment"]
    # Stop timeout outlasts the default drain (neuron.toml drain_timeout_s = 60).
    assert int(neuron["TimeoutStopSec"][0].rstrip("s")) > 60 + 30


def test_sysusers_files(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    (tmp_path / "etc").mkdir()
    confs = [str(CONF / "sysusers" / name) for name in ("cortex.conf", "neuron.conf")]
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", *confs], check=True)
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    assert passwd["cortex"][5] == "/var/lib/cortex" and passwd["neuron"][5] == "/var/lib/neuron"
    assert all(passwd[user][6].endswith("nologin") for user in ("cortex", "neuron"))
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert "neuron" in groups["video"] and "neuron" in groups["render"]


@pytest.mark.parametrize(("name", "ports"), [("cortex", {31313, 31314}), ("neuron", {13131})])
def test_firewalld_services(name: str, ports: set[int]) -> None:
    service = ET.parse(CONF / "firewalld" / f"{name}.xml").getroot()
    assert service.tag == "service" and service.findtext("short") == name
    assert service.findtext("description")
    found = {(p.get("protocol"), int(p.get("port", "0"))) for p in service.findall("port")}
    assert found == {("tcp", port) for port in ports}
