"""The results store: one SQLite file, one row per run, keyed by a hash of the run's config.

Several processes on one host share one store (SQLite's WAL mode needs a local file system: to spread a sweep
over several hosts, use the Ray backend, whose driver alone touches the store). The guarantees the sweep runner
relies on:

- every state change is its own committed transaction, so a process killed at any moment (SIGKILL included)
  loses nothing it had already finished;
- `claim` runs under `BEGIN IMMEDIATE` (the write lock), so two processes never both claim one run;
- a run left 'running' by a dead process goes back to 'pending' with `reclaim_stale`; finished runs never do.

Open one `Store` per process (a SQLite connection must not cross a fork); within a process it may be shared
between threads (e.g. a heartbeat thread).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager

from depthlab.errors import DepthlabError, SpecError

DEFAULT_STORE = "depthlab.sqlite"
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged", "failed")
METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc")

# Keys a record adds to its run's config. A config key of the same name is shadowed in the flat record
# (notably `epochs`: planned in the config, the number recorded in the record); the untouched config stays
# available under the record's "config" key (see `config_of`).
RECORD_FIELDS = (
    "run_id", "sweep", "status", "params", "q", *METRICS,
    "epochs", "seconds", "history", "env", "error", "attempts",
)

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS runs (
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
    )""",
    "CREATE INDEX IF NOT EXISTS runs_status ON runs (status, sweep)",
    # A run belongs to every sweep that lists it (two specs may share runs; a run is trained once): runs.sweep
    # keeps the first sweep's name, this table all of them. The backfill covers stores written before it existed.
    """CREATE TABLE IF NOT EXISTS sweep_runs (
        sweep  TEXT NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        PRIMARY KEY (sweep, run_id)
    )""",
    "INSERT OR IGNORE INTO sweep_runs (sweep, run_id) SELECT sweep, run_id FROM runs ORDER BY rowid",
)


def _plain(obj):
    """A JSON-safe copy: non-finite floats become None (strict JSON has no NaN), numpy values become Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return _plain(obj.tolist())
    raise TypeError(f"not JSON-serialisable: {obj!r} ({type(obj).__name__})")


def _dumps(obj) -> str:
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(config: dict) -> str:
    """Sorted keys, no spaces, floats as repr (what `json` writes): the text a run id hashes."""

    def default(o):
        if hasattr(o, "item"):  # numpy integers are not ints to json; numpy floats already are floats
            return o.item()
        raise TypeError(f"config value is not JSON-serialisable: {o!r}")

    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=default)


def run_id(config: dict) -> str:
    """Stable id of a run: the first 16 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


_OWN_TOKENS: set[str] = set()  # the owner tokens this process has handed out


def owner_token() -> str:
    """Who holds a claim: host, pid (so a dead owner on this host can be detected) and a random part."""
    token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    _OWN_TOKENS.add(token)
    return token


def config_of(record: dict) -> dict:
    """The config of a record from `Store.records` (or of a hand-made flat record without a "config" key)."""
    cfg = record.get("config")
    if isinstance(cfg, dict):
        return cfg
    return {k: v for k, v in record.items() if k not in RECORD_FIELDS and k != "config"}


def finite(value):
    """A metric as a float, or None when missing, NaN or infinite (stored as NULL; strict JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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


def _owner_dead(owner: str | None, last_beat: float | None, stale_after: float, now: float) -> bool:
    host, pid = None, None
    parts = (owner or "").rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        host, pid = parts[0], int(parts[1])
    if host == socket.gethostname():
        if pid == os.getpid():
            # our own pid: alive only if this process made the token; otherwise an earlier process that had
            # the same pid (a restarted container often gets the same one) died holding the claim
            return owner not in _OWN_TOKENS
        return not _pid_alive(pid)
    # another host (or an owner we cannot parse): only the heartbeat tells
    return last_beat is None or now - last_beat > stale_after


class Store:
    """A results store in one SQLite file (WAL mode), safe to share between processes."""

    def __init__(self, path=DEFAULT_STORE, *, stale_after: float = 600.0):
        self.path = os.fspath(path)
        self.stale_after = float(stale_after)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._refuse_foreign()  # before anything below changes the file
            self._conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL survives any process crash; only a power cut may lose the last commits.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            with self._tx() as c:
                for statement in _SCHEMA:
                    c.execute(statement)
        except sqlite3.DatabaseError as err:
            raise DepthlabError(f"{self.path}: cannot open as a depthlab results store ({err})") from err

    @classmethod
    def existing(cls, path, **kwargs) -> "Store":
        """The store at `path`, which must exist (for commands that only read: a missing file is a mistake)."""
        if not os.path.isfile(path):
            raise DepthlabError(f"no results store at {os.fspath(path)!r}; start a sweep first with `depthlab run`, "
                                "or point to one with --store FILE")
        return cls(path, **kwargs)

    # -- plumbing -------------------------------------------------------------------------------------------

    def _refuse_foreign(self) -> None:
        """Refuse an SQLite file that holds other tables, or a `runs` table of another shape: writing our
        schema (or WAL mode) into somebody else's database would change it."""
        tables = sorted(r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        if not tables:
            return  # a new, empty file
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        missing = sorted({"run_id", "config", "status", "history", "final", *METRICS} - columns)
        if "runs" not in tables or missing:
            what = (f"tables: {', '.join(tables)}" if "runs" not in tables
                    else f"its runs table lacks {', '.join(missing)}")
            self._conn.close()
            raise DepthlabError(f"{self.path}: an SQLite database, but not a depthlab results store ({what}); "
                                "point --store to a depthlab store or to a new file")

    @contextmanager
    def _tx(self):
        """One write transaction, holding the database write lock from its start (BEGIN IMMEDIATE)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing --------------------------------------------------------------------------------------------

    def add_runs(self, configs: list[dict], sweep: str = "") -> list[str]:
        """Add pending runs to `sweep`; a run already present (any status) is left as it is and only joins the
        sweep, so it is never trained twice. Returns their ids."""
        ids = [run_id(c) for c in configs]
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO runs (run_id, sweep, config, created_at) VALUES (?, ?, ?, ?)",
                [(i, sweep, canonical_json(cfg), now) for i, cfg in zip(ids, configs)],
            )
            c.executemany("INSERT OR IGNORE INTO sweep_runs (sweep, run_id) VALUES (?, ?)", [(sweep, i) for i in ids])
        return ids

    def reclaim_stale(self) -> int:
        """Put 'running' runs whose owner is dead back to 'pending'. Returns how many.

        Same host: the owner's pid is not alive. Another host (or an unparseable owner): no heartbeat for
        `stale_after` seconds.
        """
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                "SELECT run_id, owner, COALESCE(heartbeat_at, claimed_at) FROM runs WHERE status = 'running'"
            ).fetchall()
            dead = [rid for rid, owner, beat in rows if _owner_dead(owner, beat, self.stale_after, now)]
            c.executemany(
                "UPDATE runs SET status = 'pending', owner = NULL WHERE run_id = ? AND status = 'running'",
                [(rid,) for rid in dead],
            )
        return len(dead)

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
        """Give runs back unfinished (running by `owner` -> pending), e.g. when a pack is split after OOM."""
        with self._tx() as c:
            c.executemany(
                "UPDATE runs SET status = 'pending', owner = NULL WHERE run_id = ? AND owner = ? "
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
            history.append(_plain(dict(metrics)))
            c.execute(
                "UPDATE runs SET history = ?, heartbeat_at = ? WHERE run_id = ?", (_dumps(history), now, run_id)
            )
        return True

    def finish(self, run_id: str, owner: str, *, status: str, final: dict, history: list[dict], params: int,
               q: float, seconds: float, env: dict, error: str | None = None) -> bool:
        """Record a finished run (its own committed transaction). Only if it is running by `owner`: a run
        reclaimed and claimed by someone else meanwhile is theirs; then nothing is written and False returned."""
        if status not in FINISHED:
            raise SpecError("status", status, ", ".join(FINISHED))
        final = dict(final or {})
        extra = {k: v for k, v in final.items() if k not in METRICS}  # kept, not lost
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE runs SET status = ?, finished_at = ?, history = ?, "
                f"{', '.join(f'{m} = ?' for m in METRICS)}, final = ?, params = ?, q = ?, seconds = ?, env = ?, "
                f"error = ? WHERE run_id = ? AND owner = ? AND status = 'running'",
                (
                    status, time.time(), _dumps(list(history or [])),
                    *(finite(final.get(m)) for m in METRICS),
                    _dumps(extra) if extra else None,
                    None if params is None else int(params), finite(q), finite(seconds),
                    _dumps(env or {}), error, run_id, owner,
                ),
            )
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

    # -- reading --------------------------------------------------------------------------------------------

    def _where(self, status=None, sweep=None) -> tuple[str, list]:
        clauses, params = [], []
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

    def records(self, *, status=None, sweep=None) -> list[dict]:
        """One flat dict per run, in insertion order: every config key, then the RECORD_FIELDS (which shadow
        config keys of the same name), plus "config" (the config as given) and any extra final metrics. With
        `sweep`, the runs that sweep lists (shared runs included), each record's "sweep" being that sweep."""
        where, params = self._where(status, sweep)
        out = []
        for row in self._query(f"SELECT * FROM runs{where} ORDER BY rowid", params):
            config = json.loads(row["config"])
            history = json.loads(row["history"])
            rec = dict(config)
            rec.update(
                run_id=row["run_id"], sweep=row["sweep"] if sweep is None else sweep, status=row["status"],
                params=row["params"], q=row["q"],
                **{m: row[m] for m in METRICS},
                epochs=len(history), seconds=row["seconds"], history=history,
                env=json.loads(row["env"]) if row["env"] else {}, error=row["error"], attempts=row["attempts"],
            )
            for k, v in (json.loads(row["final"]) if row["final"] else {}).items():
                rec.setdefault(k, v)
            rec["config"] = config
            out.append(rec)
        return out

    def counts(self, sweep=None) -> dict[str, int]:
        """Runs per status (every status a key, zeros included)."""
        where, params = self._where(sweep=sweep)
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._query(f"SELECT status, COUNT(*) AS n FROM runs{where} GROUP BY status", params):
            counts[row["status"]] = row["n"]
        return counts

    def sweeps(self) -> list[str]:
        """Sweep names in the order they were first added."""
        rows = self._query("SELECT sweep, MIN(rowid) AS first FROM sweep_runs GROUP BY sweep ORDER BY first")
        return [r["sweep"] for r in rows]

    def running(self) -> list[dict]:
        """The running runs with their owner, claim time and last heartbeat."""
        return self._query(
            "SELECT run_id, sweep, owner, attempts, claimed_at, heartbeat_at FROM runs "
            "WHERE status = 'running' ORDER BY owner, rowid"
        )
