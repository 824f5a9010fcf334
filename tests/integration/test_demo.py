"""`pixport demo` as a user runs it: the real command in a subprocess, its hub and gateways as processes.

The data dir's name has a space and Hangul in it, so the commands the demo prints must be quoted
to run as printed.  Every check is against what is really there: the hub's signed directory, the
studies retrieved through the hub and read with pydicom, `pixport verify` run as printed, the
process table and the ports after a stop, and the bytes of every file the demo left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.multival import MultiValue

from pixport.samples import HOSPITALS, PATIENTS, SAMPLE_RRNS
from pixport.trust.assertions import authorization_header
from pixport.trust.directory import verify_directory
from pixport.trust.keys import SigningKey, jwk_thumbprint

PIXPORT = [sys.executable, "-c", "from pixport.cli.main import main; main()"]
READY = "Stop with Ctrl-C."
STOPPED = "Demo network stopped."
DEADLINE = 90.0
"""How long to wait for the demo to say something, or to exit (a deadline, not a speed limit)."""
STUDIES = sum(len(h.studies) for h in HOSPITALS)
HOSPITAL_NAMES = {"HANBIT": "한빛대학교병원", "PUREUN": "푸른바다병원", "SAEBOM": "새봄의료원"}
RRN_FORMS = [rrn.encode() for rrn in SAMPLE_RRNS] + [rrn.replace("-", "").encode() for rrn in SAMPLE_RRNS]
# Each patient's name as it could be written: whole, by component group, and its non-ASCII components of two
# or more characters (ISO 2022 IR 149 escapes to KS X 1001 again after every "^"); in UTF-8 and in EUC-KR.
NAME_FORMS = {
    form
    for patient in PATIENTS
    for text in (
        patient.name,
        *patient.name.split("="),
        *(c for c in re.split("[=^]", patient.name) if len(c) > 1 and not c.isascii()),
    )
    for form in (text.encode(), text.encode("euc_kr"))
}
KS_X_1001 = b"\x1b$)C"  # the ISO 2022 escape sequence of ISO 2022 IR 149 (G1)
TOKEN_MARKS = [b"PixPort-Assertion", b"eyJ"]  # the scheme, and the start of any JWT or JWS
URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
HANGUL_NAME = re.compile(r"[가-힣]+\^[가-힣]+")
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


# -- processes and ports ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """Running (a zombie is not: it has exited and only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _descendants(pid: int) -> set[int]:
    parents = {int(p.name): _parent_of(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _port_free(port: int) -> bool:
    """Whether a server could listen on the port now (as uvicorn binds: TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int, avoid: set[int]) -> int:
    """The first of ``count`` consecutive free loopback ports (the gateways take consecutive ones)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        ports = set(range(base, base + count))
        if base + count < 65536 and not ports & avoid and all(_port_free(p) for p in ports):
            return base
    pytest.fail(f"no {count} consecutive free ports")


@dataclass
class DemoRun:
    """One `pixport demo` process, its output in files, and every process it was seen to start."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    seen: set[int] = field(default_factory=set)

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def look(self) -> set[int]:
        """The demo's live descendants now (each one is remembered, to check later it is gone)."""
        current = {pid for pid in _descendants(self.process.pid) if _alive(pid)}
        self.seen |= current
        return current

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while text not in self.stdout:
            self.look()
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited ({self.process.returncode}) before {text!r}:\n{self.stdout}{self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not say {text!r} within {DEADLINE} s:\n{self.stdout}{self.stderr}")
            time.sleep(0.1)

    def wait_exit(self) -> int:
        deadline = time.monotonic() + DEADLINE
        while self.process.poll() is None:
            self.look()
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not exit within {DEADLINE} s:\n{self.stdout}{self.stderr}")
            time.sleep(0.05)
        return self.process.returncode

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group (the demo's)."""
        self.look()
        os.killpg(self.process.pid, signal.SIGINT)

    def line(self, label: str) -> str:
        """The rest of the output line that starts with ``label``."""
        found = [line for line in self.stdout.splitlines() if line.startswith(label)]
        assert len(found) == 1, f"one line {label!r} expected in:\n{self.stdout}"
        return found[0].removeprefix(label).strip()

    def stop(self) -> None:
        """Cleanup only: SIGTERM if it still runs, then kill whatever it started that is left."""
        if self.process.poll() is None:
            self.look()
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for pid in self.seen:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_demo(workdir: Path, *args: str | Path) -> DemoRun:
    number = len(list(workdir.glob("demo-*.out")))
    out, err = workdir / f"demo-{number}.out", workdir / f"demo-{number}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*PIXPORT, "demo", *map(str, args)],
            cwd=workdir,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a command started from a shell
        )
    return DemoRun(process, out, err)


def assert_stopped_cleanly(run: DemoRun, ports: list[int], expected_status: int = 0) -> None:
    status = run.wait_exit()
    assert status == expected_status, run.stdout + run.stderr
    if expected_status == 0:
        assert run.stdout.rstrip().endswith(STOPPED), run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    left = {pid: _command_line(pid) for pid in run.seen if _alive(pid)}
    assert not left, f"still running after the demo exited: {left}"
    assert [p for p in ports if not _port_free(p)] == []


# -- the network ---------------------------------------------------------------------------------------


@dataclass
class Network:
    workdir: Path
    root: Path
    hub_port: int
    gateway_ports: list[int]
    run: DemoRun
    runs: list[DemoRun]
    manifest_ids: set[str]

    @property
    def ports(self) -> list[int]:
        return [self.hub_port, *self.gateway_ports]

    def operator_get(self, path: str, *, hub_port: int | None = None, accept: str | None = None) -> httpx.Response:
        """A GET at the hub as the operator, with the key the demo made."""
        key = SigningKey.load(self.root / "operator-key.pem")
        headers = authorization_header(key, "operator", "pixport-hub", "GET", path.split("?", maxsplit=1)[0])
        if accept:
            headers["accept"] = accept
        return httpx.get(f"http://127.0.0.1:{hub_port or self.hub_port}{path}", headers=headers, timeout=60)

    def start(self, *args: str | Path) -> DemoRun:
        run = start_demo(self.workdir, "--data-dir", self.root, *args)
        self.runs.append(run)
        return run

    def stop_all(self) -> None:
        for run in self.runs:
            run.stop()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    workdir = tmp_path_factory.mktemp("demo")
    root = workdir / "pixport demo 데모"
    hub_port = _free_ports(1, set())
    gateway_port = _free_ports(3, {hub_port})
    run = start_demo(workdir, "--data-dir", root, "--hub-port", hub_port, "--gateway-port", gateway_port)
    net = Network(workdir, root, hub_port, [gateway_port + i for i in range(3)], run, [run], set())
    try:
        run.wait_for(READY)
        listed = net.operator_get("/hub/manifests")
        assert listed.status_code == 200, listed.text
        net.manifest_ids = {m["manifest_id"] for m in listed.json()}
        yield net
    finally:
        net.stop_all()


def _parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    return [
        chunk.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")
        for chunk in response.content.split(b"--" + boundary.encode())[1:-1]
    ]


def test_it_runs_a_hub_and_three_gateways_where_it_says(network: Network) -> None:
    run = network.run
    assert network.root.name in run.line("Network data in")
    assert run.line("Hub:").startswith(f"http://127.0.0.1:{network.hub_port} ")
    for hospital, port in zip(HOSPITALS, network.gateway_ports, strict=True):
        shown = run.line(f"Gateway {hospital.code}")
        assert URL.findall(shown) == [str(port)]
        assert HOSPITAL_NAMES[hospital.code] in shown
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    assert run.line("Published:").startswith(f"{STUDIES} studies, {STUDIES} of them now")
    # Four processes of its own, each serving one node.
    commands = sorted(_command_line(pid).split("main()")[-1].strip() for pid in run.look())
    assert commands == ["gateway serve"] * 3 + ["hub serve"]
    assert all(not _port_free(port) for port in network.ports)


def test_the_hub_lists_the_three_hospitals_with_their_korean_names(network: Network) -> None:
    anonymous = httpx.get(f"http://127.0.0.1:{network.hub_port}/hub/directory", timeout=10)
    assert anonymous.status_code == 401
    response = network.operator_get("/hub/directory")
    assert response.status_code == 200, response.text
    hub_jwk = json.loads((network.root / "hub" / "hub-key.jwk").read_text())
    directory = verify_directory(response.text, hub_jwk)
    assert {i.code: i.name_ko for i in directory.institutions} == HOSPITAL_NAMES
    for institution, port in zip(
        sorted(directory.institutions, key=lambda i: [h.code for h in HOSPITALS].index(i.code)),
        network.gateway_ports,
        strict=True,
    ):
        assert institution.active
        assert institution.endpoint == f"http://127.0.0.1:{port}"
        own_key = json.loads((network.root / institution.code.lower() / "institution-key.jwk").read_text())
        assert [k.kid for k in institution.keys] == [jwk_thumbprint(own_key)]


def test_every_study_comes_back_through_the_hub_with_the_promised_modalities_and_names(network: Network) -> None:
    manifests = network.operator_get("/hub/manifests").json()
    assert len(manifests) == STUDIES
    assert {m["institution"] for m in manifests} == set(HOSPITAL_NAMES)
    assert all(m["status"] == "current" for m in manifests)
    found = network.operator_get("/dicomweb/studies").json()
    assert {s["0020000D"]["Value"][0] for s in found} == {m["study_instance_uid"] for m in manifests}
    modalities: set[str] = set()
    charsets: dict[str, set[str]] = {}
    multiframe = 0
    for manifest in manifests:
        study = manifest["study_instance_uid"]
        response = network.operator_get(
            f"/dicomweb/studies/{study}", accept='multipart/related; type="application/dicom"'
        )
        assert response.status_code == 200, response.text
        parts = _parts(response)
        assert len(parts) == manifest["number_of_instances"] > 0
        for part in parts:
            ds = pydicom.dcmread(io.BytesIO(part))
            assert ds.StudyInstanceUID == study
            raw_name = ds.get_item("PatientName").value  # the bytes as stored, before any decoding
            assert isinstance(raw_name, bytes)
            value = ds.SpecificCharacterSet
            charset = list(value)[-1] if isinstance(value, MultiValue) else str(value)
            name = ds.PatientName
            assert str(name) in {p.name for p in PATIENTS}
            assert HANGUL_NAME.fullmatch(name.phonetic), str(name)
            if charset == "ISO 2022 IR 149":
                for component in name.phonetic.split("^"):
                    assert KS_X_1001 + component.encode("euc_kr") in raw_name
                    assert component.encode() not in raw_name
            else:
                assert charset == "ISO_IR 192"
                assert name.phonetic.encode() in raw_name
            charsets.setdefault(charset, set()).add(name.phonetic)
            modalities.add(ds.Modality)
            if ds.Modality == "US":
                assert ds.SOPClassUID == US_MULTIFRAME
                frames = int(ds.NumberOfFrames)
                assert frames > 1
                size = frames * ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
                assert len(ds.PixelData) == size
                multiframe += 1
    assert {"CT", "MR", "US"} <= modalities
    assert modalities & {"CR", "DX"}
    assert multiframe > 0
    assert set(charsets) == {"ISO_IR 192", "ISO 2022 IR 149"}
    assert all(charsets.values())


def _run_printed(command: str, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command line the demo printed, run as a shell would (``NAME=value`` words first go to the environment)."""
    words = shlex.split(command)
    env = _environment()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0], flags=re.DOTALL):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert Path(words[0]).name == "pixport"
    assert shutil.which(words[0], path=env.get("PATH")) is not None, f"{words[0]} cannot be run from a shell here"
    return subprocess.run(
        [*words, *(extra or [])], env=env, capture_output=True, text=True, timeout=DEADLINE, check=False
    )


def test_the_printed_verify_command_reports_the_exported_study_intact(network: Network, tmp_path: Path) -> None:
    printed = network.run.line("Try:")
    words = shlex.split(printed)
    assert words[1] == "verify"
    checked = _run_printed(printed)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    summary = re.fullmatch(r"VERIFIED: (\d+) of (\d+) instances intact, signed by (.+)", checked.stdout.splitlines()[0])
    assert summary is not None, checked.stdout
    assert summary[1] == summary[2]
    assert summary[3] == "한빛대학교병원 (HANBIT)"
    assert "every image is the manifest's patient" in checked.stdout

    as_json = _run_printed(printed, ["--json"])
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    counts = report["counts"]
    assert counts["listed"] == counts["verified"] == counts["intact"] == int(summary[1]) > 0
    assert counts["altered"] == counts["missing"] == counts["extra"] == 0
    assert report["directory"]["ok"] is True
    assert report["signer"]["ok"] is True
    assert report["signer"]["institution"]["code"] == "HANBIT"
    assert report["signer"]["institution"]["name_ko"] == HOSPITAL_NAMES["HANBIT"]
    assert report["identity"]["ok"] is True
    assert report["manifest"]["manifest_id"] in network.manifest_ids
    # The command really reads the images: one left out of a copy is missing.
    images = tmp_path / "images"
    shutil.copytree(words[3], images)
    min(images.iterdir()).unlink()
    incomplete = _run_printed(shlex.join([*words[:3], str(images), *words[4:]]), ["--json"])
    assert incomplete.returncode == 1, incomplete.stdout + incomplete.stderr
    assert json.loads(incomplete.stdout)["counts"]["missing"] == 1


def test_the_printed_audit_command_runs(network: Network) -> None:
    printed = network.run.stdout.splitlines()[network.run.stdout.splitlines().index(READY) - 2].strip()
    assert printed.startswith("PIXPORT_HUB__DATA_DIR=")
    audited = _run_printed(printed)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert audited.stdout.startswith("Audit log intact:")


def test_ctrl_c_stops_the_demo_and_every_process_it_started(network: Network) -> None:
    run = network.run
    assert len(run.look()) == 4
    run.ctrl_c()
    # Every process seen, including any started briefly while stopping, is gone afterwards.
    assert_stopped_cleanly(run, network.ports)


def test_a_second_run_reuses_the_data_and_publishes_nothing_twice(network: Network) -> None:
    network.stop_all()
    # Another hub port; the gateways keep theirs (the hub's directory names them) when none is given.
    hub_port = _free_ports(1, set(network.ports))
    again = network.start("--hub-port", hub_port)
    again.wait_for(READY)
    assert again.line("Published:").startswith(f"{STUDIES} studies, 0 of them now")
    for hospital, port in zip(HOSPITALS, network.gateway_ports, strict=True):
        assert URL.findall(again.line(f"Gateway {hospital.code}")) == [str(port)]
    listed = network.operator_get("/hub/manifests", hub_port=hub_port)
    assert {m["manifest_id"] for m in listed.json()} == network.manifest_ids
    study = listed.json()[0]["study_instance_uid"]
    through_hub = network.operator_get(f"/dicomweb/studies/{study}", hub_port=hub_port)
    assert through_hub.status_code == 200
    assert len(_parts(through_hub)) == listed.json()[0]["number_of_instances"]
    again.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(again, [hub_port, *network.gateway_ports])
    # Other gateway ports than the directory's are refused, saying what to do, before anything starts.
    moved = network.start("--hub-port", hub_port, "--gateway-port", _free_ports(3, {hub_port, *network.ports}))
    assert moved.wait_exit() == 2
    assert "leave out --gateway-port" in moved.stderr
    assert not moved.seen


def test_a_node_that_stops_on_its_own_ends_the_demo_with_an_error(network: Network) -> None:
    network.stop_all()
    run = network.start("--hub-port", network.hub_port)
    run.wait_for(READY)
    gateway = next(pid for pid in run.look() if _command_line(pid).endswith("gateway serve"))
    os.kill(gateway, signal.SIGKILL)
    assert_stopped_cleanly(run, network.ports, expected_status=1)
    assert "stopped unexpectedly" in run.stderr
    assert str(network.root / "logs") in run.stderr


def test_ctrl_c_while_it_starts_stops_it_cleanly(network: Network) -> None:
    network.stop_all()
    run = network.start("--hub-port", network.hub_port)
    run.wait_for("Network data in")
    run.ctrl_c()
    assert_stopped_cleanly(run, network.ports)
    assert READY not in run.stdout


def test_no_rrn_name_or_token_in_the_logs_or_the_hub(network: Network) -> None:
    network.stop_all()
    assert len(network.runs) > 0
    logs = {str(p): p.read_bytes() for p in (network.root / "logs").iterdir()}
    assert set(map(Path, logs)) == {network.root / "logs" / f"{n}.log" for n in ("hub", *HOSPITAL_NAMES)}
    for run in network.runs:
        logs[str(run.out)] = run.out.read_bytes()
        logs[str(run.err)] = run.err.read_bytes()
    everything = {str(p): p.read_bytes() for p in network.root.rglob("*") if p.is_file()} | logs
    for where, data in everything.items():
        for rrn in RRN_FORMS:
            assert rrn not in data, f"an RRN is in {where}"
    assert "길동".encode("euc_kr") in NAME_FORMS
    for where, data in logs.items():
        for name in NAME_FORMS:
            assert name not in data, f"a patient name is in {where}"
        for mark in TOKEN_MARKS:
            assert mark not in data, f"a token is in {where}"
    # The scan reads the right bytes: names are in the archives, national keys and tokens in the hub's database.
    hub_db = network.root / "hub" / "hub.db"
    assert hub_db.read_bytes().count(b"eyJ") >= STUDIES
    assert any(b"nk1." in data for where, data in everything.items() if where.startswith(str(network.root / "hub")))
    given_name = KS_X_1001 + PATIENTS[0].name.split("=")[2].split("^")[1].encode("euc_kr")
    assert PATIENTS[0].charset == "ISO 2022 IR 149"
    assert any(given_name in data for where, data in everything.items() if "/archive/" in where)


def test_a_port_in_use_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        hub_port = taken.getsockname()[1]
        gateway_port = _free_ports(3, {hub_port})
        run = start_demo(tmp_path, "--hub-port", hub_port, "--gateway-port", gateway_port)  # the default data dir
        try:
            status = run.wait_exit()
        finally:
            run.stop()
    assert status == 2, run.stdout + run.stderr
    assert f"{hub_port} (hub)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not run.seen
    assert (tmp_path / "pixport-demo" / "hub" / "hub.db").is_file()
    assert not (tmp_path / "pixport-demo" / "logs").exists()
