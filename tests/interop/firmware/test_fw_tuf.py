"""python-tuf's ngclient against fleetwarden's TUF repository, served over loopback HTTP.

Table-driven attacks (after the python-tuf test suite): each scenario tampers with what
the static host serves, and the client must refuse with the expected error.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, MetaFile, Root, Timestamp
from tuf.ngclient import Updater

from fleetwarden.firmware.repository import Repository, load_signer

pytestmark = pytest.mark.interop
PW = b"root passphrase"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that stop reading endless data reset the connection


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "repo", tmp_path / "keys")
    r.init(tmp_path / "rootkeys", root_keys=3, threshold=2, passphrase=PW)
    for v in ("1.0.0", "1.1.0"):
        src = tmp_path / f"fw-{v}.bin"
        src.write_bytes(os.urandom(3000))
        r.add_target("cam", f"cam/{v}/fw.bin", src, custom={"version": v})
    return r


@pytest.fixture
def server(repo: Repository) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(repo.path))
    httpd = _Server(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(repo: Repository, server: str, tmp_path: Path) -> Callable[[], Updater]:
    meta = tmp_path / "client" / "meta"
    meta.mkdir(parents=True)
    shutil.copyfile(repo.metadata_dir / "1.root.json", meta / "root.json")
    dl = tmp_path / "client" / "dl"
    dl.mkdir()

    def make() -> Updater:
        return Updater(
            str(meta), f"{server}/metadata/", str(dl), f"{server}/targets/", bootstrap=None
        )

    return make


def test_happy_path_and_download(client: Callable[[], Updater]) -> None:
    up = client()
    up.refresh()
    info = up.get_targetinfo("cam/1.1.0/fw.bin")
    assert info is not None
    assert info.unrecognized_fields["custom"] == {"version": "1.1.0"}
    assert Path(up.download_target(info)).stat().st_size == 3000
    assert up.get_targetinfo("cam/9.9.9/fw.bin") is None


def test_root_rotation_followed(
    repo: Repository, client: Callable[[], Updater], tmp_path: Path
) -> None:
    client().refresh()
    old = [load_signer(tmp_path / "rootkeys" / f"root-{i}.pem", PW) for i in (1, 3)]
    new_files = repo.rotate_root(old, tmp_path / "newroot", root_keys=2, threshold=1, passphrase=PW)
    new = [load_signer(new_files[0], PW)]
    repo.rotate_online("timestamp", new)
    repo.rotate_online("snapshot", new)
    up = client()
    up.refresh()
    assert up._trusted_set.root.version == 4  # noqa: SLF001 (the client's own view)
    assert up.get_targetinfo("cam/1.0.0/fw.bin") is not None
    # old root keys can no longer sign a root: the repository refuses under threshold
    from fleetwarden.firmware.errors import RepositoryError

    with pytest.raises(RepositoryError, match="need 1 of the current root keys"):
        repo.rotate_online("timestamp", old)


def test_root_rotation_under_threshold_refused(repo: Repository, tmp_path: Path) -> None:
    from fleetwarden.firmware.errors import RepositoryError

    one = [load_signer(tmp_path / "rootkeys" / "root-1.pem", PW)]
    with pytest.raises(RepositoryError, match="need 2"):
        repo.rotate_root(one, tmp_path / "x", root_keys=1, threshold=1, passphrase=PW)


def _resign_timestamp(repo: Repository, mutate: Callable[[Timestamp], None]) -> None:
    ts = repo.load("timestamp", Timestamp)
    ts.signed.version += 1
    mutate(ts.signed)
    repo._sign_write("timestamp", ts, [repo._online_signer("timestamp")])  # noqa: SLF001


def attack_rollback_timestamp(repo: Repository, path: Path) -> None:
    (repo.metadata_dir / "timestamp.json").write_bytes(path.read_bytes())


def attack_rollback_snapshot(repo: Repository, path: Path) -> None:
    _resign_timestamp(repo, lambda t: setattr(t, "snapshot_meta", MetaFile(version=1)))


def attack_freeze(repo: Repository, path: Path) -> None:
    _resign_timestamp(
        repo,
        lambda t: setattr(
            t, "expires", datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        ),
    )


def attack_mix_and_match(repo: Repository, path: Path) -> None:
    # a new timestamp is published, but the snapshot file it names is swapped for an
    # older, validly signed one
    repo.refresh(margin=2.0)
    v = repo._latest_version("snapshot")  # noqa: SLF001
    shutil.copyfile(
        repo.metadata_dir / f"{v - 1}.snapshot.json", repo.metadata_dir / f"{v}.snapshot.json"
    )


def attack_wrong_key(repo: Repository, path: Path) -> None:
    from securesystemslib.signer import CryptoSigner

    ts = repo.load("timestamp", Timestamp)
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(CryptoSigner.generate_ed25519())
    (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())


def attack_endless_timestamp(repo: Repository, path: Path) -> None:
    with (repo.metadata_dir / "timestamp.json").open("ab") as fh:
        fh.write(b" " * (2 << 20))


ATTACKS = [
    (
        "rollback: replayed older timestamp",
        attack_rollback_timestamp,
        tuf_exc.BadVersionNumberError,
    ),
    (
        "rollback: timestamp names older snapshot",
        attack_rollback_snapshot,
        tuf_exc.BadVersionNumberError,
    ),
    ("freeze: expired timestamp", attack_freeze, tuf_exc.ExpiredMetadataError),
    (
        "mix-and-match: older snapshot under new name",
        attack_mix_and_match,
        tuf_exc.BadVersionNumberError,
    ),
    ("timestamp signed by an untrusted key", attack_wrong_key, tuf_exc.UnsignedMetadataError),
    ("endless data: huge timestamp", attack_endless_timestamp, tuf_exc.DownloadLengthMismatchError),
]


@pytest.mark.parametrize(("case", "attack", "error"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_metadata_attacks_rejected(
    repo: Repository,
    client: Callable[[], Updater],
    tmp_path: Path,
    case: str,
    attack: Callable[[Repository, Path], None],
    error: type[Exception],
) -> None:
    saved = tmp_path / "old-timestamp.json"
    shutil.copyfile(repo.metadata_dir / "timestamp.json", saved)
    repo.refresh(margin=2.0)  # a newer snapshot+timestamp the client will trust
    client().refresh()
    attack(repo, saved)
    with pytest.raises(error):
        client().refresh()


def _tamper(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))


def _endless(p: Path) -> None:
    with p.open("ab") as fh:
        fh.write(b"\0" * (1 << 20))


@pytest.mark.parametrize(
    ("mutate", "error"),
    [(_tamper, tuf_exc.LengthOrHashMismatchError), (_endless, tuf_exc.DownloadLengthMismatchError)],
    ids=["tampered target", "endless target"],
)
def test_target_attacks_rejected(
    repo: Repository,
    client: Callable[[], Updater],
    mutate: Callable[[Path], None],
    error: type[Exception],
) -> None:
    path = repo.target_path("cam/1.1.0/fw.bin")
    assert path is not None
    mutate(path)
    up = client()
    up.refresh()
    info = up.get_targetinfo("cam/1.1.0/fw.bin")
    assert info is not None
    with pytest.raises(error):
        up.download_target(info)


def test_refresh_resigns_only_when_due(repo: Repository) -> None:
    assert repo.refresh() == []
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    _resign_timestamp(repo, lambda t: setattr(t, "expires", soon))
    before = repo.load("timestamp", Timestamp).signed.version
    assert repo.refresh() == ["timestamp"]
    assert repo.load("timestamp", Timestamp).signed.expires > soon
    assert repo.load("timestamp", Timestamp).signed.version == before + 1
    assert repo.refresh(margin=2.0) == ["snapshot", "timestamp"]


def test_consistent_snapshot_layout(repo: Repository) -> None:
    root = Metadata[Root].from_file(str(repo.metadata_dir / "root.json"))
    assert root.signed.consistent_snapshot
    names = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "timestamp.json", "1.targets.json", "2.targets.json"} <= names
    assert "1.cam.json" in names
    assert sum(n.endswith(".json") and ".cam-bin-" in n for n in names) >= 64
    # the two targets sit in their hash bins, each bin signed with its own version
    assert sorted(repo.targets_of("cam")) == ["cam/1.0.0/fw.bin", "cam/1.1.0/fw.bin"]
    files = list((repo.targets_dir / "cam" / "1.0.0").iterdir())
    assert len(files) == 1 and len(files[0].name.split(".", 1)[0]) == 64
