"""The results store: one SQLite file, one row per run (a config trained by a recipe; see `depthlab.records`).

Several processes on one host share one store (SQLite's WAL mode needs a local file system: to spread a sweep
over several hosts, use the Ray backend, whose driver alone touches the store). The contract the sweep runner
relies on:

- every state change is its own committed transaction, so a process killed at any moment (SIGKILL included)
  loses nothing it had already finished;
- `claim` runs under `BEGIN IMMEDIATE` (the write lock), so two processes never both claim one run;
- a run left 'running' by a dead owner goes back to 'pending' with `reclaim_stale`; finished runs never do.
  An owner is dead when its process is gone (same host) or its heartbeat is older than `stale_after`
  (any host: a pid reused by an unrelated process must not hold a run forever);
- read-only opens (`Store(path, readonly=True)`, what `status`, `results`, `compare` and `report` use) never
  change the file, not even to migrate it: an old store is migrated in a private in-memory copy. They work where
  nothing may be written too (a read-only folder or mount; see `Store._connect_readonly`).

A store is its file with links resolved (`Store.file`): opened through a symlink and through its target, it is one
store, with one weights folder beside the real file (`depthlab.results.weights`).

Schema versions: the file's SQLite `user_version` is the schema version. `MIGRATIONS` run in order, once, each
in one transaction with the version bump; a store of a newer depthlab (a higher version) is refused, and so
is an SQLite file that is not a depthlab store (checked before anything is written).

Run ids hash the canonical config (without the fields at their neutral value, see `depthlab.records`), so a new
run field with a neutral default needs no migration: declare it with `added(...)` beside the others. Schema 5 is
the last re-keying: it moved every store to the canonical ids.

Open one `Store` per process (a SQLite connection must not cross a fork); within a process it may be shared
between threads (e.g. a heartbeat thread).
"""

from __future__ import annotations

import filecmp
import gc
import json
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Mapping
from urllib.parse import quote

from depthlab.errors import DepthlabError, SpecError
from depthlab.records import (FINISHED, METRICS, RECORD_FIELDS, STATUSES, RunRecord, canonical_json, config_id, dumps,
                              finite, run_id)

DEFAULT_STORE = "depthlab.sqlite"
SHIFT_STATUSES = ("done", "diverged")  # a measurement under shift either finished or its loss became NaN

# -- schema and migrations ------------------------------------------------------------------------------------

# The columns of the runs table at version 1 (the first schema, written before versions were recorded).
_V1_COLUMNS = ("run_id", "sweep", "config", "status", "owner", "attempts", "created_at", "claimed_at",
               "heartbeat_at", "finished_at", "history", *METRICS, "final", "params", "q", "seconds", "env", "error")
_V2_RECIPE = 1  # the recipe of every run trained before recipes were recorded


def _run_fields() -> Mapping:
    """The run fields' neutral values, which ids leave out. Their declaration (depthlab.spec.config) is imported
    here, where ids are computed, not at the top: it imports torch, which `status` and `results` do without."""
    from depthlab.spec.config import neutral

    return neutral()


def _v1(c: sqlite3.Connection, path: str) -> None:
    """The runs table and the sweep → run links (a run belongs to every sweep that lists it)."""
    c.execute(f"""CREATE TABLE IF NOT EXISTS runs (
        run_id       TEXT PRIMARY KEY,
        sweep        TEXT NOT NULL DEFAULT '',
        config       TEXT NOT NULL,
        status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES!r}),
        owner        TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_at   REAL NOT NULL,
        claimed_at   REAL,
        heartbeat_at REAL,
        finished_at  REAL,
        history      TEXT NOT NULL DEFAULT '[]',
        {", ".join(f"{m} REAL" for m in METRICS)},
        final        TEXT,
        params       INTEGER,
        q            REAL,
        seconds      REAL,
        env          TEXT,
        error        TEXT
    )""")
    c.execute("CREATE INDEX IF NOT EXISTS runs_status ON runs (status, sweep)")
    c.execute("""CREATE TABLE IF NOT EXISTS sweep_runs (
        sweep  TEXT NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        PRIMARY KEY (sweep, run_id)
    )""")
    # stores written before sweep_runs existed: each run belongs to the sweep that added it
    c.execute("INSERT OR IGNORE INTO sweep_runs (sweep, run_id) SELECT sweep, run_id FROM runs ORDER BY rowid")


def _v2(c: sqlite3.Connection, path: str) -> None:
    """Recipes: a run is a config trained by a recipe. Adds `recipe` (1 for every run so far), `config_id` and
    `train_seconds`. The runs keep their ids here: version 5 re-keys them (and renames their weights)."""
    for column in ("recipe INTEGER", "config_id TEXT", "train_seconds REAL"):
        c.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    c.execute("UPDATE runs SET recipe = ?", (_V2_RECIPE,))
    c.execute("CREATE INDEX IF NOT EXISTS runs_config ON runs (config_id)")


def _v3(c: sqlite3.Connection, path: str) -> None:
    """Measurements under covariate shift (`depthlab shift`): one row per (run, corruption, severity, method,
    evaluation batch size, alpha, seed); see the "shift measurements" section below."""
    c.execute(f"""CREATE TABLE IF NOT EXISTS shift_results (
        run_id     TEXT NOT NULL REFERENCES runs (run_id),
        corruption TEXT NOT NULL,
        severity   INTEGER NOT NULL,
        method     TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        alpha      REAL NOT NULL,
        seed       INTEGER NOT NULL,
        status     TEXT NOT NULL CHECK (status IN {SHIFT_STATUSES!r}),
        loss       REAL,
        accuracy   REAL,
        examples   INTEGER NOT NULL,
        seconds    REAL,
        settings   TEXT NOT NULL DEFAULT '{{}}',
        env        TEXT NOT NULL DEFAULT '{{}}',
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, corruption, severity, method, batch_size, alpha, seed)
    )""")


def _v4(c: sqlite3.Connection, path: str) -> None:
    """Pack sizes measured on a machine (`depthlab.train.packs`): the best pack size of a shape there, and the
    model-samples/s each candidate size reached. Keyed by the shape, device, precision and software."""
    c.execute("""CREATE TABLE IF NOT EXISTS pack_sizes (
        key         TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        rates       TEXT NOT NULL DEFAULT '{}',
        measured_at REAL NOT NULL
    )""")


def _v5(c: sqlite3.Connection, path: str) -> None:
    """Ids stable under additions: every run re-keyed by its canonical config and recipe (`depthlab.records`), its
    stored config completed with the neutral values of the fields it predates, an `init_from` rewritten to the new
    id of the run it names; the tables keyed by run id follow, and so do the pack sizes' keys (`RunConfig.pack_key`
    leaves neutral fields out too). Each re-keying is recorded in `rekeyed`, in this transaction: the weights files
    are renamed from there after the commit (`Store._rename_weights`), so a process killed in between leaves the
    renames to the next open instead of stranding the files under ids the store no longer knows."""
    c.execute("CREATE TABLE IF NOT EXISTS rekeyed (old_id TEXT PRIMARY KEY, new_id TEXT NOT NULL, "
              "renamed INTEGER NOT NULL DEFAULT 0)")
    runs = {rid: (json.loads(text), recipe) for rid, text, recipe in
            c.execute("SELECT run_id, config, recipe FROM runs ORDER BY rowid").fetchall()}
    packs = c.execute("SELECT key FROM pack_sizes").fetchall()
    if not runs and not packs:
        return  # a new store: nothing to re-key, and no need of the run fields (their module brings torch)
    neutral = _run_fields()
    new = _new_ids(runs, neutral)
    kept = _kept(c, path, new)
    for old in runs:  # first, so that no new id meets a row still under it
        if kept[new[old]] != old:  # the same run stored twice (before its fields were canonical): one stays
            c.execute("DELETE FROM runs WHERE run_id = ?", (old,))
    for old, (config, _) in runs.items():
        config = {**neutral, **config}
        c.execute("UPDATE runs SET run_id = ?, config = ?, config_id = ? WHERE run_id = ?",
                  (new[old], canonical_json(config), config_id(config, neutral), old))
        if new[old] != old:
            for table in ("sweep_runs", "shift_results"):  # a row the kept run has already stays once
                c.execute(f"UPDATE OR IGNORE {table} SET run_id = ? WHERE run_id = ?", (new[old], old))
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (old,))
            c.execute("INSERT OR REPLACE INTO rekeyed (old_id, new_id) VALUES (?, ?)", (old, new[old]))
    for (key,) in packs:
        c.execute("UPDATE OR REPLACE pack_sizes SET key = ? WHERE key = ?", (_canonical_pack_key(key, neutral), key))


def _new_ids(runs: dict, neutral: Mapping) -> dict:
    """{old id: canonical id} of `runs` ({id: (config, recipe)}), rewriting each `init_from` that names one of them
    in place: a run's new id hashes the new id of the run it starts from, so that one is computed first."""
    new: dict[str, str] = {}

    def rekey(old, chain=()):
        if old in chain:
            raise DepthlabError(f"run {old} starts from itself through init_from ({' -> '.join(chain)})")
        if old not in new:
            config, recipe = runs[old]
            if config.get("init_from") in runs:
                config["init_from"] = rekey(config["init_from"], (*chain, old))
            new[old] = run_id(config, recipe, neutral)
        return new[old]

    for old in runs:
        rekey(old)
    return new


def _kept(c: sqlite3.Connection, path: str, new: dict) -> dict:
    """{new id: the old id whose row stays}: of the rows one run was stored under twice, the furthest along
    (done first), then one with saved weights, then the latest to finish."""
    rank = {status: i for i, status in enumerate(("done", "diverged", "failed", "running", "pending"))}
    rows = c.execute("SELECT run_id, status, finished_at FROM runs").fetchall()
    weights = Path(f"{path}.weights")
    best = {}
    for old, status, finished in rows:
        key = (rank[status], not (weights / f"{old}.pt").is_file(), -(finished or 0))
        if new[old] not in best or key < best[new[old]][0]:
            best[new[old]] = (key, old)
    return {rid: old for rid, (_, old) in best.items()}


def _canonical_pack_key(key: str, neutral: Mapping) -> str:
    """A calibrated pack size's key (`packs.calibration_key`) without the fields at their neutral value."""
    try:
        value = json.loads(key)
        value["pack_key"] = [[k, v] for k, v in value["pack_key"] if k not in neutral or v != str(neutral[k])]
    except (ValueError, TypeError, KeyError):
        return key  # not a key this depthlab wrote: left as it is
    return canonical_json(value)


def _v6(c: sqlite3.Connection, path: str) -> None:
    """Studies (`depthlab study`): each study's spec and the round it has reached, so that a killed study resumes
    where it stopped; and the cost of a network measured on a machine (parameters, FLOPs, training throughput,
    inference latency), keyed by the network's shape, the device, the precision and the software."""
    c.execute("""CREATE TABLE IF NOT EXISTS studies (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        round      INTEGER NOT NULL DEFAULT 0,
        state      TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    )""")
    c.execute("""CREATE TABLE IF NOT EXISTS costs (
        key         TEXT PRIMARY KEY,
        cost        TEXT NOT NULL,
        measured_at REAL NOT NULL
    )""")


def _v7(c: sqlite3.Connection, path: str) -> None:
    """An index of sweep memberships by run: every read lists each run's sweeps, and without it each run's list
    scanned the whole table (10,000 runs: 6.7 s of the 7.1 s `Store.records` took)."""
    c.execute("CREATE INDEX IF NOT EXISTS sweep_runs_by_run ON sweep_runs (run_id)")


def _v8(c: sqlite3.Connection, path: str) -> None:
    """Each run's number of recorded epochs as a column, kept by a trigger wherever its history is written:
    every read counts them, and counting parsed every history (100,000 runs of 10 epochs: 0.2 s of each read,
    growing with the epochs)."""
    if "epochs_run" not in {row[1] for row in c.execute("PRAGMA table_info(runs)")}:
        c.execute("ALTER TABLE runs ADD COLUMN epochs_run INTEGER NOT NULL DEFAULT 0")
    c.execute("UPDATE runs SET epochs_run = json_array_length(history)")
    c.execute("""CREATE TRIGGER IF NOT EXISTS runs_epochs_run AFTER UPDATE OF history ON runs BEGIN
        UPDATE runs SET epochs_run = json_array_length(NEW.history) WHERE rowid = NEW.rowid;
    END""")


# (version, what it does, migration(connection, path))
MIGRATIONS = [
    (1, "runs and sweep_runs tables", _v1),
    (2, "recipes: recipe, config_id and train_seconds columns", _v2),
    (3, "shift_results: measurements of trained runs under covariate shift", _v3),
    (4, "pack_sizes: pack sizes calibrated on this machine", _v4),
    (5, "run ids of canonical configs (stable under added fields); weights, init_from and keys follow", _v5),
    (6, "studies and costs: a study's spec and round, a network's measured cost", _v6),
    (7, "an index of sweep memberships by run (reads linear in the store's size)", _v7),
    (8, "each run's number of recorded epochs, kept by a trigger", _v8),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_COLUMNS = {1: set(_V1_COLUMNS), 2: {*_V1_COLUMNS, "recipe", "config_id", "train_seconds"}}
for _version in range(3, 8):
    _COLUMNS[_version] = _COLUMNS[2]  # versions 3 to 7 add tables and an index, not columns of runs
_COLUMNS[8] = _COLUMNS[7] | {"epochs_run"}
# The tables a store may hold at each version (a store without the later ones is migrated; any other is foreign).
_TABLES = {1: {"runs", "sweep_runs"}, 2: {"runs", "sweep_runs"}, 3: {"runs", "sweep_runs", "shift_results"},
           4: {"runs", "sweep_runs", "shift_results", "pack_sizes"},
           5: {"runs", "sweep_runs", "shift_results", "pack_sizes", "rekeyed"}}
_TABLES[6] = _TABLES[5] | {"studies", "costs"}
_TABLES[7] = _TABLES[8] = _TABLES[6]


# -- owners ---------------------------------------------------------------------------------------------------

_OWN_TOKENS: set[str] = set()  # the owner tokens this process has handed out


def owner_token() -> str:
    """Who holds a claim: host, pid (so a dead owner on this host can be detected) and a random part."""
    token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    _OWN_TOKENS.add(token)
    return token


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    try:  # a zombie (killed, not yet reaped) answers os.kill but is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def owner_dead(owner: str | None, last_beat: float | None, stale_after: float, now: float | None = None) -> bool:
    """Whether the owner of a running run is gone: its heartbeat is older than `stale_after` seconds (any
    host; a live runner beats every minute), or, on this host, its process no longer exists (or is this
    process under a token it never made: an earlier process with the same pid died holding the claim)."""
    now = time.time() if now is None else now
    if last_beat is None or now - last_beat > stale_after:
        return True
    host, pid = None, None
    parts = (owner or "").rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        host, pid = parts[0], int(parts[1])
    if host == socket.gethostname():
        if pid == os.getpid():
            return owner not in _OWN_TOKENS
        return not _pid_alive(pid)
    return False  # another host with a fresh heartbeat


# -- the store ------------------------------------------------------------------------------------------------


def _sqlite(target: str) -> sqlite3.Connection:
    """A connection to a path or a `file:` URI. isolation_level=None: `Store` issues BEGIN IMMEDIATE / COMMIT
    itself."""
    conn = sqlite3.connect(target, uri=target.startswith("file:"), timeout=60.0, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def check_store_path(path) -> str:
    """A store is a file: refuse what SQLite would quietly keep in memory ('', ':memory:', URIs), a directory,
    and a file in a folder that does not exist, before anything is trained."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip() or text == ":memory:" or text.startswith("file:"):
        raise DepthlabError(f"--store {text!r}: a results store must be a file path (e.g. runs.sqlite); an empty "
                            "name, ':memory:' or a 'file:' URI would keep nothing")
    if os.path.isdir(text):
        raise DepthlabError(f"--store {text!r} is a directory; give a file path inside it, e.g. {text.rstrip('/')}/"
                            "runs.sqlite")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise DepthlabError(f"--store {text!r}: the directory {parent!r} does not exist")
    return text


class Store:
    """A results store in one SQLite file (WAL mode), safe to share between processes."""

    def __init__(self, path=DEFAULT_STORE, *, stale_after: float = 600.0, readonly: bool = False):
        self.path = check_store_path(path)  # as given: what messages name
        self.file = os.path.realpath(self.path)  # what is opened, and what the weights folder is named after
        self.stale_after = float(stale_after)
        self.readonly = readonly
        self.migrated: list[int] = []  # the schema versions this open migrated to
        self._lock = threading.Lock()
        self._private: tempfile.TemporaryDirectory | None = None  # a copy read instead of the file (see below)
        try:
            self._conn = self._connect()
            self._open()
        except sqlite3.DatabaseError as err:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            self._drop_private()
            raise DepthlabError(f"{self.path}: cannot open as a depthlab results store ({err})") from err

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            return self._connect_readonly()
        return _sqlite(self.file)

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write. A WAL database is read through its index file (-shm), which SQLite
        creates beside it; in a folder this process may not write (a read-only mount, another user's folder) it
        cannot, and since SQLite 3.22 it reads there only when the -shm and -wal files exist already
        (https://www.sqlite.org/wal.html#readonly). Otherwise: a store without a write-ahead log (closed cleanly)
        is opened `immutable`, which needs no index and is safe since nobody can be writing a WAL database where
        its log cannot be created; a store whose log holds pages is read through a private copy, where SQLite
        merges the log (`_merged_copy`)."""
        uri = f"file:{quote(self.file)}?mode=ro"
        conn = _sqlite(uri)
        try:
            conn.execute("PRAGMA schema_version")  # SQLite opens the file at the first statement
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if os.access(os.path.dirname(self.file), os.W_OK):
                raise  # not a folder it may not write: an error of its own
        wal = f"{self.file}-wal"
        if not os.path.exists(wal) or os.path.getsize(wal) == 0:
            return _sqlite(uri + "&immutable=1")
        return self._merged_copy(wal)

    def _merged_copy(self, wal: str) -> sqlite3.Connection:
        """A connection to a private copy of the store and its write-ahead log (which SQLite merges there), for a
        store whose log cannot be read in place. Says in one line when the log held pages the store file lacks:
        results committed by a runner that was stopped before it could merge them (it does when it finishes), which
        stay out of the file until the store is opened where it can be written."""
        self._private = tempfile.TemporaryDirectory(prefix="depthlab-store-")
        copy = os.path.join(self._private.name, "store.sqlite")
        try:
            shutil.copyfile(self.file, copy)
            shutil.copyfile(wal, f"{copy}-wal")
        except OSError as err:
            self._drop_private()
            raise DepthlabError(f"{self.path}: its write-ahead log {wal} cannot be read in this read-only folder, "
                                f"and copying the store to {self._private.name} to read it there failed "
                                f"({err.strerror or err})") from err
        conn = _sqlite(copy)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if not filecmp.cmp(copy, self.file, shallow=False):
            print(f"note: {wal} holds results that are not in the store file yet (read here through a private "
                  "copy: this folder is read-only); copy the store with its -wal file, or open it once where it can "
                  f"be written (`depthlab release --store {self.path} --stale`) to merge them", file=sys.stderr)
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _drop_private(self) -> None:
        if self._private is not None:
            self._private.cleanup()
            self._private = None

    def _open(self) -> None:
        version = self._check()  # before anything below changes the file
        if self.readonly:
            if version < SCHEMA_VERSION:  # migrate a private copy: a read never changes the file
                memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                self._conn.backup(memory)
                self._conn.close()
                self._conn = memory
                self._migrate()
                self._conn.execute("PRAGMA query_only = ON")  # the copy is as read-only as the file
                self._drop_private()  # read from memory now
            return
        self._conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL survives any process crash; only a power cut may lose the last commits.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()
        self._rename_weights()

    @classmethod
    def existing(cls, path, **kwargs) -> "Store":
        """The store at `path`, which must exist (for commands that only read: a missing file is a mistake)."""
        check_store_path(path)
        if not os.path.isfile(path):
            raise DepthlabError(f"no results store at {os.fspath(path)!r}; start a sweep first with `depthlab run`, "
                                "or point to one with --store FILE")
        if os.path.getsize(path) == 0:
            raise DepthlabError(f"{os.fspath(path)!r} is an empty file, not a results store")
        return cls(path, **kwargs)

    # -- plumbing -------------------------------------------------------------------------------------------

    def _check(self) -> int:
        """The file's schema version, after refusing a newer store and an SQLite database that is not ours
        (writing our schema or WAL mode into somebody else's database would change it)."""
        # One read transaction, so one snapshot: a peer still creating the store commits its migrations one by
        # one, and read apart the version could predate the tables (which would then look foreign).
        with self._snapshot():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = sorted(r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        if version > SCHEMA_VERSION:
            raise DepthlabError(f"{self.path}: written by a newer depthlab (store schema {version}; this depthlab "
                                f"reads up to {SCHEMA_VERSION}); upgrade depthlab to read it")
        if not tables and version == 0:
            return 0  # a new, empty file
        expected = _COLUMNS[max(version, 1)]
        missing = sorted(expected - columns)
        foreign = sorted(set(tables) - _TABLES[max(version, 1)])
        if "runs" not in tables or missing or foreign:
            what = (f"tables: {', '.join(tables)}" if "runs" not in tables or foreign
                    else f"its runs table lacks {', '.join(missing)}")
            raise DepthlabError(f"{self.path}: an SQLite database, but not a depthlab results store ({what}); "
                                "point --store to a depthlab store or to a new file")
        return version

    def _migrate(self) -> None:
        """Run the migrations the file has not had, in order, each in one transaction with its version bump."""
        for version, _, migrate in MIGRATIONS:
            with self._tx() as c:
                if c.execute("PRAGMA user_version").fetchone()[0] >= version:
                    continue  # done before, or by another process while we waited for the lock
                migrate(c, self.file)
                c.execute(f"PRAGMA user_version = {int(version)}")
            self.migrated.append(version)

    def _rename_weights(self) -> None:
        """Give the saved weights of re-keyed runs (schema 5) their new ids. Each rename is idempotent and marked
        done once the file is under its new name (or there is none to rename), so every write open finishes what
        an open killed after the migration's commit left; a read-only open leaves files alone."""
        pending = self._query("SELECT old_id, new_id FROM rekeyed WHERE renamed = 0")
        folder = Path(f"{self.file}.weights")
        for row in pending:
            source, target = folder / f"{row['old_id']}.pt", folder / f"{row['new_id']}.pt"
            if source.is_file() and not target.exists():
                try:
                    source.replace(target)
                except FileNotFoundError:
                    pass  # a peer opening the store at the same moment renamed it first
        if pending:
            with self._tx() as c:
                c.executemany("UPDATE rekeyed SET renamed = 1 WHERE old_id = ?", [(r["old_id"],) for r in pending])

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _tx(self):
        """One write transaction, holding the database write lock from its start (BEGIN IMMEDIATE)."""
        with self._lock:
            try:  # BEGIN inside: a signal right after it must still roll the transaction back
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params=()) -> list[dict]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file (PASSIVE: it waits for no reader), so that a
        copy of the .sqlite file alone holds every committed result, even after this process is killed."""
        if not self.readonly:
            with self._lock:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._drop_private()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing --------------------------------------------------------------------------------------------

    def add_runs(self, configs: list[dict], sweep: str = "", *, recipe: int) -> list[str]:
        """Add pending runs of `configs` trained by `recipe` to `sweep`; a run already present (any status) is
        left as it is and only joins the sweep, so it is never trained twice. Returns their ids."""
        neutral = _run_fields()
        ids = [run_id(c, recipe, neutral) for c in configs]
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO runs (run_id, sweep, config, config_id, recipe, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(i, sweep, canonical_json(cfg), config_id(cfg, neutral), recipe, now)
                 for i, cfg in zip(ids, configs)],
            )
            c.executemany("INSERT OR IGNORE INTO sweep_runs (sweep, run_id) VALUES (?, ?)", [(sweep, i) for i in ids])
        return ids

    def older_recipes(self, configs: list[dict], recipe: int) -> dict[int, int]:
        """{older recipe: runs}: finished runs of these configs trained by a recipe older than `recipe` (kept in
        the store, but superseded: the same configs are to be trained again under `recipe`)."""
        neutral = _run_fields()
        wanted = {config_id(c, neutral) for c in configs}
        out: dict[int, int] = {}
        for row in self._query("SELECT config_id, recipe FROM runs WHERE recipe < ? AND status IN "
                               f"({', '.join('?' * len(FINISHED))})", (recipe, *FINISHED)):
            if row["config_id"] in wanted:
                out[row["recipe"]] = out.get(row["recipe"], 0) + 1
        return out

    def reclaim_stale(self, run_ids: list[str] | None = None) -> int:
        """Put 'running' runs whose owner is dead (see `owner_dead`) back to 'pending'; only those of `run_ids`
        when given. Returns how many."""
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                "SELECT run_id, owner, COALESCE(heartbeat_at, claimed_at) FROM runs WHERE status = 'running'"
            ).fetchall()
            wanted = None if run_ids is None else set(run_ids)
            dead = [rid for rid, owner, beat in rows if (wanted is None or rid in wanted)
                    and owner_dead(owner, beat, self.stale_after, now)]
            c.executemany(  # the interrupted attempt's partial history goes: a pending run has none
                "UPDATE runs SET status = 'pending', owner = NULL, history = '[]' WHERE run_id = ? "
                "AND status = 'running'",
                [(rid,) for rid in dead],
            )
        return len(dead)

    def release_runs(self, run_ids: list[str] | None = None, *, stale: bool = False) -> list[str]:
        """By hand: put running runs back to pending whoever holds them (`run_ids`), or those whose owner is
        dead (`stale`). Returns the ids released."""
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                "SELECT run_id, owner, COALESCE(heartbeat_at, claimed_at) FROM runs WHERE status = 'running' "
                "ORDER BY rowid").fetchall()
            chosen = [rid for rid, owner, beat in rows
                      if (run_ids is not None and rid in run_ids)
                      or (stale and owner_dead(owner, beat, self.stale_after, now))]
            c.executemany("UPDATE runs SET status = 'pending', owner = NULL, history = '[]' WHERE run_id = ? "
                          "AND status = 'running'", [(rid,) for rid in chosen])
        return chosen

    def pending_outside(self, sweep: str, run_ids: list[str]) -> list[str]:
        """The pending runs of `sweep` that are not among `run_ids` (e.g. left by an earlier version of an
        edited spec: nothing will train them unless that version runs again)."""
        keep = set(run_ids)
        rows = self._query("SELECT r.run_id FROM runs r JOIN sweep_runs s ON s.run_id = r.run_id "
                           "WHERE s.sweep = ? AND r.status = 'pending' ORDER BY r.rowid", (sweep,))
        return [r["run_id"] for r in rows if r["run_id"] not in keep]

    def drop_pending(self, sweep: str, run_ids: list[str] | None = None) -> int:
        """Take the pending runs of `sweep` (only those of `run_ids` when given) out of it; a pending run no other
        sweep lists is deleted. Finished and running runs are never dropped. Returns how many left the sweep."""
        with self._tx() as c:
            rows = c.execute("SELECT r.run_id FROM runs r JOIN sweep_runs s ON s.run_id = r.run_id "
                             "WHERE s.sweep = ? AND r.status = 'pending'", (sweep,)).fetchall()
            chosen = [r[0] for r in rows if run_ids is None or r[0] in set(run_ids)]
            for rid in chosen:
                c.execute("DELETE FROM sweep_runs WHERE sweep = ? AND run_id = ?", (sweep, rid))
                c.execute("DELETE FROM runs WHERE run_id = ? AND status = 'pending' AND NOT EXISTS "
                          "(SELECT 1 FROM sweep_runs WHERE run_id = ?)", (rid, rid))
        return len(chosen)

    def claim(self, run_ids: list[str], owner: str) -> list[str]:
        """Mark those of `run_ids` that are still pending as running by `owner`; return those, in order."""
        now = time.time()
        claimed = []
        with self._tx() as c:
            for rid in run_ids:
                cur = c.execute(
                    # a fresh attempt starts from scratch: history and error of an earlier one are dropped
                    "UPDATE runs SET status = 'running', owner = ?, attempts = attempts + 1, claimed_at = ?, "
                    "heartbeat_at = ?, history = '[]', error = NULL WHERE run_id = ? AND status = 'pending'",
                    (owner, now, now, rid),
                )
                if cur.rowcount == 1:
                    claimed.append(rid)
        return claimed

    def heartbeat(self, run_ids: list[str], owner: str) -> None:
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND owner = ? AND status = 'running'",
                [(now, rid, owner) for rid in run_ids],
            )

    def release(self, run_ids: list[str], owner: str) -> None:
        """Give runs back unfinished (running by `owner` -> pending), e.g. when a pack is split after OOM. The
        partial history goes with the claim: a pending run has none."""
        with self._tx() as c:
            c.executemany(
                "UPDATE runs SET status = 'pending', owner = NULL, history = '[]' WHERE run_id = ? AND owner = ? "
                "AND status = 'running'",
                [(rid, owner) for rid in run_ids],
            )

    def retry(self, run_ids: list[str], statuses=("failed",)) -> int:
        """Put finished runs with one of `statuses` back to pending (e.g. failed ones after a fix)."""
        marks = ",".join("?" * len(statuses))
        with self._tx() as c:
            return sum(c.execute(f"UPDATE runs SET status = 'pending', owner = NULL WHERE run_id = ? AND status IN "
                                 f"({marks})", (rid, *statuses)).rowcount for rid in run_ids)

    def record_epoch(self, run_id: str, owner: str, metrics: dict) -> bool:
        """Append one epoch's metrics to the run's history (also a heartbeat). False if not running by owner."""
        now = time.time()
        with self._tx() as c:
            row = c.execute(
                "SELECT history FROM runs WHERE run_id = ? AND owner = ? AND status = 'running'", (run_id, owner)
            ).fetchone()
            if row is None:
                return False
            history = json.loads(row[0])
            history.append(dict(metrics))
            c.execute(
                "UPDATE runs SET history = ?, heartbeat_at = ? WHERE run_id = ?", (dumps(history), now, run_id)
            )
        return True

    def finish(self, run_id: str, owner: str, *, status: str, final: dict, history: list[dict], params: int,
               q: float, seconds: float, env: dict, error: str | None = None,
               train_seconds: float | None = None, then=None) -> bool:
        """Record a finished run (its own committed transaction). Only if it is running by `owner`: a run
        reclaimed and claimed by someone else meanwhile is theirs; then nothing is written and False returned.
        Extra final metrics (keys of `final` besides METRICS) are kept; none may be named like a record field.
        `then()` runs inside the transaction once the run is known to be the owner's, before the commit (the
        driver moves the run's weights into place there); if it raises, nothing is recorded."""
        if status not in FINISHED:
            raise SpecError("status", status, ", ".join(FINISHED))
        final = dict(final or {})
        extra = {k: v for k, v in final.items() if k not in METRICS}  # kept, not lost
        clash = sorted(set(extra) & set(RECORD_FIELDS))
        if clash:
            raise ValueError(f"final metrics may not be named like record fields: {', '.join(clash)}")
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE runs SET status = ?, finished_at = ?, history = ?, "
                f"{', '.join(f'{m} = ?' for m in METRICS)}, final = ?, params = ?, q = ?, seconds = ?, "
                f"train_seconds = ?, env = ?, error = ? WHERE run_id = ? AND owner = ? AND status = 'running'",
                (
                    status, time.time(), dumps(list(history or [])),
                    *(finite(final.get(m)) for m in METRICS),
                    dumps(extra) if extra else None,
                    None if params is None else int(params), finite(q), finite(seconds), finite(train_seconds),
                    dumps(env or {}), error, run_id, owner,
                ),
            )
            if cur.rowcount == 1:
                # measurements of the run's earlier training (a retrained run) describe other weights
                c.execute("DELETE FROM shift_results WHERE run_id = ?", (run_id,))
            if cur.rowcount == 1 and then is not None:
                then()
            return cur.rowcount == 1

    def fail(self, run_id: str, owner: str, error: str) -> bool:
        """Mark a run failed with its error, keeping the history recorded so far. Only if running by owner."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? "
                "WHERE run_id = ? AND owner = ? AND status = 'running'",
                (time.time(), str(error), run_id, owner),
            )
            return cur.rowcount == 1

    def reopen(self, run_ids: list[str], reason: str) -> int:
        """Put done runs back to pending (e.g. their weights were asked for and are missing), saying why."""
        with self._tx() as c:
            return sum(c.execute("UPDATE runs SET status = 'pending', owner = NULL, error = ? WHERE run_id = ? "
                                 "AND status = 'done'", (reason, rid)).rowcount for rid in run_ids)

    # -- reading --------------------------------------------------------------------------------------------

    def _where(self, status=None, sweep=None, run_ids=None) -> tuple[str, list]:
        clauses, params = [], []
        if run_ids is not None:  # runs by id, as one JSON parameter: any number of them (SQLite limits the
            # bound parameters of a statement, 999 in older builds), read in the store's order
            clauses.append("run_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(run_ids)))
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                if s not in STATUSES:
                    raise SpecError("status", s, ", ".join(STATUSES))
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if sweep is not None:
            clauses.append("run_id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)")
            params.append(sweep)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def records(self, *, status=None, sweep=None, run_ids=None, history: bool = True) -> list[RunRecord]:
        """One frozen record per run, in insertion order (`depthlab.records.RunRecord`: the config, the result
        fields, extra final metrics). With `sweep`, the runs that sweep lists (shared runs included), each
        record's `sweep` being that sweep; with `run_ids`, those runs only. With `history=False` the records
        leave their per-epoch history out (`epochs_run` still counts its epochs): it is most of a run's row, and
        only what draws or exports curves reads it (100,000 runs of 10 epochs: over a quarter of the read's time)."""
        where, params = self._where(status, sweep, run_ids)
        columns = ", ".join((*_RECORD_COLUMNS, "history" if history else "NULL"))  # what a record holds
        # each run's sweeps from one read of the memberships (of the runs read), not one subquery per run
        members = "SELECT run_id, sweep FROM sweep_runs" + (f" WHERE run_id IN (SELECT run_id FROM runs{where})"
                                                            if where else "")
        with self._lock, collector_paused(), self._snapshot():
            sweeps: dict[str, list] = {}
            for rid, name in self._conn.execute(f"{members} ORDER BY rowid", params):
                sweeps.setdefault(rid, []).append(name)
            cur = self._conn.execute(f"SELECT {columns} FROM runs{where} ORDER BY rowid", params)
            return _records(cur, sweep, sweeps)

    @contextmanager
    def _snapshot(self):
        """One read transaction around several reads, so that they see one state of the store (a writer may
        commit between two statements otherwise); inside a transaction already, that one."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def counts(self, sweep=None) -> dict[str, int]:
        """Runs per status (every status a key, zeros included)."""
        where, params = self._where(sweep=sweep)
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._query(f"SELECT status, COUNT(*) AS n FROM runs{where} GROUP BY status", params):
            counts[row["status"]] = row["n"]
        return counts

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        """{run id: status} of those of `run_ids` in the store."""
        out = {}
        ids = list(run_ids)
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[start:start + 500]
            for row in self._query(f"SELECT run_id, status FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})",
                                   chunk):
                out[row["run_id"]] = row["status"]
        return out

    def sweeps(self) -> list[str]:
        """Sweep names in the order they were first added."""
        rows = self._query("SELECT sweep, MIN(rowid) AS first FROM sweep_runs GROUP BY sweep ORDER BY first")
        return [r["sweep"] for r in rows]

    def running(self) -> list[dict]:
        """The running runs with their owner, claim time, last heartbeat and whether the owner is dead."""
        rows = self._query(
            "SELECT run_id, sweep, owner, attempts, claimed_at, heartbeat_at FROM runs "
            "WHERE status = 'running' ORDER BY owner, rowid"
        )
        now = time.time()
        for r in rows:
            beat = r["heartbeat_at"] if r["heartbeat_at"] is not None else r["claimed_at"]
            r["owner_dead"] = owner_dead(r["owner"], beat, self.stale_after, now)
        return rows

    # -- shift measurements (schema 3; written by `depthlab shift`, see depthlab.shift) ----------------------
    #
    # A row is one measurement of a trained run on a corrupted test stream with a test-time method. Its key is
    # (run_id, corruption, severity, method, batch_size, alpha, seed); every row is its own committed
    # transaction and an existing key is never written again, so a killed `depthlab shift` resumes where it
    # stopped, recomputing nothing finished and duplicating nothing.

    def add_shift_result(self, row: dict) -> bool:
        """Insert one measurement (keys: SHIFT_KEY, status, loss, accuracy, examples, seconds, settings, env).
        False, and nothing written, when its key is already in the store."""
        missing = [k for k in (*SHIFT_KEY, "status", "examples") if k not in row]
        if missing:
            raise ValueError(f"a shift row needs {', '.join(missing)}")
        if row["status"] not in SHIFT_STATUSES:
            raise SpecError("status", row["status"], ", ".join(SHIFT_STATUSES))
        with self._tx() as c:
            cur = c.execute(
                f"INSERT OR IGNORE INTO shift_results ({', '.join(SHIFT_KEY)}, status, loss, accuracy, examples, "
                "seconds, settings, env, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_shift_key(row), row["status"], finite(row.get("loss")), finite(row.get("accuracy")),
                 int(row["examples"]), finite(row.get("seconds")), dumps(row.get("settings") or {}),
                 dumps(row.get("env") or {}), time.time()))
            return cur.rowcount == 1

    def shift_keys(self, run_ids=None) -> set[tuple]:
        """The keys (SHIFT_KEY order) of the measurements in the store (of `run_ids` when given)."""
        return {_shift_key(r) for r in self.shift_rows(run_ids)}

    def shift_rows(self, run_ids=None) -> list[dict]:
        """Every measurement (of `run_ids` when given) as a dict, in insertion order; settings and env parsed."""
        rows = self._query("SELECT * FROM shift_results ORDER BY rowid")
        wanted = None if run_ids is None else set(run_ids)
        out = []
        for r in rows:
            if wanted is None or r["run_id"] in wanted:
                r["settings"], r["env"] = json.loads(r["settings"] or "{}"), json.loads(r["env"] or "{}")
                out.append(r)
        return out


    # -- re-keyed runs (schema 5) ---------------------------------------------------------------------------

    def rekeyed(self) -> list[tuple[str, str, bool]]:
        """(old id, new id, weights renamed) of every run that schema 5 gave a new id, in the order they had."""
        return [(r["old_id"], r["new_id"], bool(r["renamed"]))
                for r in self._query("SELECT old_id, new_id, renamed FROM rekeyed ORDER BY rowid")]

    # -- pack sizes (schema 4; calibrated by depthlab.train.packs) --------------------------------------------

    def pack_size(self, key: str) -> int | None:
        """The pack size calibrated for `key`, or None when it was never measured."""
        rows = self._query("SELECT size FROM pack_sizes WHERE key = ?", (key,))
        return int(rows[0]["size"]) if rows else None

    def save_pack_size(self, key: str, size: int, rates: dict) -> None:
        """Record a calibration (`rates`: model-samples/s per candidate size); a later one replaces it."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO pack_sizes (key, size, rates, measured_at) VALUES (?, ?, ?, ?)",
                      (key, int(size), dumps({str(k): v for k, v in rates.items()}), time.time()))


    # -- studies and costs (schema 6; written by depthlab.study) ---------------------------------------------

    def save_study(self, name: str, spec: dict, round: int, state: dict) -> None:
        """Record a study's spec and the round it has reached (a later call replaces both)."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO studies (name, spec, round, state, updated_at) VALUES (?, ?, ?, ?, ?)",
                      (name, dumps(spec), int(round), dumps(state), time.time()))

    def study(self, name: str) -> dict | None:
        """{"name", "spec", "round", "state", "updated_at"} of a recorded study, or None."""
        rows = self._query("SELECT * FROM studies WHERE name = ?", (name,))
        if not rows:
            return None
        row = rows[0]
        return {**row, "spec": json.loads(row["spec"]), "state": json.loads(row["state"] or "{}")}

    def studies(self) -> list[dict]:
        """Every recorded study (as `study` gives it), by name."""
        return [self.study(r["name"]) for r in self._query("SELECT name FROM studies ORDER BY name")]

    def cost(self, key: str) -> dict | None:
        """The cost measured under `key` (depthlab.study.cost), or None."""
        rows = self._query("SELECT cost FROM costs WHERE key = ?", (key,))
        return json.loads(rows[0]["cost"]) if rows else None

    def save_cost(self, key: str, cost: dict) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO costs (key, cost, measured_at) VALUES (?, ?, ?)",
                      (key, dumps(cost), time.time()))


# The key of a shift measurement, in column order.
SHIFT_KEY = ("run_id", "corruption", "severity", "method", "batch_size", "alpha", "seed")


@contextmanager
def collector_paused():
    """Python's cycle collector paused while many records are made at once: each of its passes would walk every
    record made so far (100,000 runs: as long as making them) to free nothing, since records hold no cycles.
    The report pauses it too while it works on them (at 100,000 runs, seconds)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# (value, end) of a JSON text: json.loads without its checks for spaces and text around the value, which the JSON
# the store writes (`dumps`) never has (a sixth of the time json.loads takes for a run's config)
_parse = json.JSONDecoder().raw_decode


# The columns of runs that `Store.records` reads, in this order, then the history (or NULL) (see `_records`); the
# scalar ones are record fields of the same name.
_RESULT_COLUMNS = ("run_id", "config_id", "recipe", "sweep", "status", "params", "q", *METRICS, "seconds",
                   "train_seconds", "error", "attempts", "epochs_run")
_RECORD_COLUMNS = (*_RESULT_COLUMNS, "config", "env", "final")


def _records(cur: sqlite3.Cursor, sweep: str | None, sweeps: dict[str, list]) -> list[RunRecord]:
    """The records of the rows of `cur` (`Store.records`' columns; `sweep`: the sweep they were read for, else each
    run's own; `sweeps`: {run id: the sweeps that list it, in order}). Each row's JSON is parsed into new objects
    and handed to `RunRecord.from_parsed` without further copies; what many runs share is shared read-only: a
    list of sweeps, and an environment (the runs of a pack record the same one, parsed once)."""
    n = len(_RESULT_COLUMNS)
    lists: dict[tuple, tuple] = {}
    envs: dict[str | None, Mapping] = {None: MappingProxyType({}), "": MappingProxyType({})}
    parse, names, make = _parse, _RESULT_COLUMNS, RunRecord.from_parsed
    out = []
    for row in cur:
        config, env_text, final, history = row[n:]
        shared_env = envs.get(env_text)
        if shared_env is None:
            shared_env = envs[env_text] = MappingProxyType(parse(env_text)[0])
        listed = tuple(sweeps.get(row[0], ()))
        listed = lists.setdefault(listed, listed)
        values = dict(zip(names, row))
        values["config"] = parse(config)[0]
        values["env"] = shared_env
        values["extra"] = parse(final)[0] if final else {}
        values["history"] = parse(history)[0] if history is not None else ()
        values["sweeps"] = listed
        if sweep is not None:
            values["sweep"] = sweep
        out.append(make(values))
    return out


def _shift_key(row: dict) -> tuple:
    """A measurement's key with canonical types (alpha a float: 1 and 1.0 are one key)."""
    return (str(row["run_id"]), str(row["corruption"]), int(row["severity"]), str(row["method"]),
            int(row["batch_size"]), float(row["alpha"]), int(row["seed"]))
