"""The study's storage under faults: cut-off journal writes, a full disk, unwritable folders, bad
heartbeat settings, and the reaper's rules (a live worker keeps its trial; clock skew is harmless);
the trial budget (trials that train nothing are replaced, up to a cap)."""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from nas.search import optuna_adapter
from nas.search import storage as st
from nas.search.storage import (
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    StudyError,
    check_storage,
    make_storage,
    reap_lost,
)
from nas.trials import Outcome


def new_study(folder: Path, trials: int = 4) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=make_storage(None, folder))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return study


def reopen(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=make_storage(None, folder))


def plain_read(journal: Path) -> list[dict]:
    """Every record, read by Optuna's own backend exactly as a fresh process would."""
    return list(JournalFileBackend(str(journal)).read_logs(0))


def asides(folder: Path) -> list[Path]:
    return sorted(folder.glob("journal.log.partial-*"))


# -- storage settings -------------------------------------------------------------------------------

@pytest.mark.parametrize(("beat", "grace"), [(20, 120), (1, 12), (5, 20)])
def test_good_heartbeat_settings_pass(beat, grace):
    check_storage({"heartbeat_interval": beat, "grace_period": grace})


@pytest.mark.parametrize(("beat", "grace", "message"), [
    (20, -1, r"grace_period must be >= 2 x heartbeat_interval \+ 10 = 50 s.*got -1"),
    (20, 49, "got 49"),
    (0, 120, "heartbeat_interval must be >= 1 s, got 0"),
    (20, float("nan"), "grace_period must be a whole number of seconds, got nan"),
    (1.5, 120, "heartbeat_interval must be a whole number"),
    ("20", 120, "heartbeat_interval must be a whole number"),
    (True, 120, "heartbeat_interval must be a whole number"),
])
def test_bad_heartbeat_settings_are_refused(beat, grace, message):
    with pytest.raises(StudyError, match=message):
        check_storage({"heartbeat_interval": beat, "grace_period": grace})


# -- the journal after a cut-off write ----------------------------------------------------------------

def test_cut_off_last_record_is_moved_aside_once_and_appends_stay_readable(tmp_path, caplog):
    new_study(tmp_path)
    journal = tmp_path / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])  # a crash (or a full disk) in the middle of the last write
    complete = whole[:-40].rsplit(b"\n", 1)[0] + b"\n"
    with caplog.at_level(logging.WARNING, logger="nas.search"):
        study = reopen(tmp_path)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # appends after the repair
    warnings = [r for r in caplog.records if "interrupted write" in r.getMessage()]
    assert len(warnings) == 1 and str(journal) in warnings[0].getMessage()
    [aside] = asides(tmp_path)
    assert aside.read_bytes() == whole[len(complete):-40]  # the partial tail, byte for byte
    assert journal.read_bytes().startswith(complete)  # every complete record kept, in place
    assert len(plain_read(journal)) == journal.read_bytes().count(b"\n")
    again = reopen(tmp_path)
    assert len(again.trials) == 6 and all(t.state.is_finished() for t in again.trials[:3])


def test_a_journal_damaged_by_an_append_onto_a_cut_off_record_is_split(tmp_path, caplog):
    """What older versions left behind: records appended (by Optuna's own backend) onto a partial one."""
    new_study(tmp_path, trials=2)
    journal = tmp_path / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])
    JournalFileBackend(str(journal)).append_logs(
        [{"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {k: 1}} for k in ("a", "b")])
    with pytest.raises(ValueError):  # Optuna alone can no longer read it
        plain_read(journal)
    with caplog.at_level(logging.WARNING, logger="nas.search"):
        study = reopen(tmp_path)
    assert study.user_attrs == {"a": 1, "b": 1} and len(study.trials) == 2
    assert len(plain_read(journal)) == journal.read_bytes().count(b"\n")
    [aside] = asides(tmp_path)
    assert aside.read_bytes().rstrip(b"\n") == whole[:-40].rsplit(b"\n", 1)[1]
    assert sum("interrupted write" in r.getMessage() for r in caplog.records) == 1


def test_a_damaged_record_inside_the_journal_is_an_error_naming_the_file(tmp_path):
    new_study(tmp_path, trials=3)
    journal = tmp_path / "journal.log"
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][:20] + b"#garbage#" + lines[3][29:]
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(StudyError, match=rf"study journal {journal}: line 4 is damaged .*backup") as e:
        reopen(tmp_path)
    assert "\n" not in str(e.value)
    assert journal.read_bytes() == b"\n".join(lines) and not asides(tmp_path)  # nothing dropped


def test_a_failed_append_takes_its_partial_record_back(tmp_path, monkeypatch):
    study = new_study(tmp_path, trials=2)
    journal = tmp_path / "journal.log"
    before = journal.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st.os, "fsync", full_disk)  # the bytes are written, then the disk is full
    with pytest.raises(OSError, match="No space left"):
        study.set_user_attr("k", "v" * 1000)
    monkeypatch.undo()
    assert journal.read_bytes() == before
    study.set_user_attr("k", "v")
    assert reopen(tmp_path).user_attrs["k"] == "v"


def test_a_tail_left_by_a_dead_writer_is_moved_aside_before_the_next_append(tmp_path, caplog):
    study = new_study(tmp_path, trials=1)
    journal = tmp_path / "journal.log"
    with journal.open("ab") as f:  # another process died mid-write while this one runs
        f.write(b'{"op_code":8,"worker_id":"x","trial_id":0,"user')
    with caplog.at_level(logging.WARNING, logger="nas.search"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [r.getMessage() for r in caplog.records if "interrupted write" in r.getMessage()]
    assert len(plain_read(journal)) == journal.read_bytes().count(b"\n")
    assert len(reopen(tmp_path).trials) == 2


# -- folders that cannot be written ---------------------------------------------------------------

def test_a_folder_without_permission_is_a_study_error(tmp_path, monkeypatch):
    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)  # the tests run as root, who may write anywhere
    with pytest.raises(StudyError, match=rf"cannot create the study journal {tmp_path / 'x'}.*Permission denied"):
        make_storage(None, tmp_path / "x")


def test_a_file_in_place_of_the_folder_is_a_study_error(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(StudyError, match="cannot create the study journal"):
        make_storage(None, tmp_path / "x")


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs mount holding a finished study with a cut-off last record."""
    new_study(tmp_path / "src", trials=2)
    (tmp_path / "src" / "journal.log").write_bytes((tmp_path / "src" / "journal.log").read_bytes()[:-40])
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mnt / "study").mkdir()
        (mnt / "study" / "journal.log").write_bytes((tmp_path / "src" / "journal.log").read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_read_only_study_is_read_and_a_new_one_refused(read_only_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="nas.search"):
        study = reopen(read_only_dir / "study")
    assert len(study.trials) == 2
    assert any("read-only" in r.getMessage() for r in caplog.records)
    with pytest.raises(StudyError, match=rf"cannot create the study journal {read_only_dir / 'new' / 'journal.log'}: "
                                         "Read-only file system"):
        make_storage(None, read_only_dir / "new")


# -- the reaper ------------------------------------------------------------------------------------

def running_trial(study: optuna.Study, worker: str, beat: float | None) -> int:
    study.enqueue_trial({"x": 0.5})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    if beat is not None:
        optuna_adapter.set_system_attr(study, trial, HEARTBEAT_ATTR, beat)
    optuna_adapter.set_system_attr(study, trial, WORKER_ATTR, worker)
    return trial.number


def states(study: optuna.Study) -> list[tuple[int, str]]:
    return [(t.number, t.user_attrs.get("nas_state") or t.state.name) for t in study.trials]


def test_a_live_worker_on_this_host_keeps_its_trial_however_late_its_beat(tmp_path):
    study = new_study(tmp_path, trials=0)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running_trial(study, f"{socket.gethostname()}:{live.pid}", beat=0.0)  # beat from 1970
        running_trial(study, st.this_worker(), beat=0.0)  # this very process
        assert reap_lost(study, grace_period=0) == []
        reused = running_trial(study, f"{socket.gethostname()}:{live.pid}", beat=None)
        optuna_adapter.set_system_attr(study, study.trials[reused], st.STARTED_ATTR, "1")
        assert reap_lost(study, grace_period=1000) == [reused]  # the pid now names another process
    finally:
        live.kill()
        live.wait()
    assert reap_lost(study, grace_period=1000) == [0]  # gone: reaped at once, whatever the grace
    assert states(study) == [(0, Outcome.LOST), (1, "RUNNING"), (2, Outcome.LOST), (3, "WAITING"), (4, "WAITING")]
    assert study.trials[4].system_attrs["fixed_params"] == {"x": 0.5} and study.trials[4].user_attrs["retry_of"] == 0


def test_another_hosts_worker_is_judged_by_its_beat_standing_still_on_the_reapers_clock(tmp_path, monkeypatch):
    study = new_study(tmp_path, trials=0)
    far = running_trial(study, "other-host:1", beat=4e9)         # a clock decades ahead
    behind = running_trial(study, "other-host:2", beat=1.0)      # a clock decades behind
    clock = [1000.0]
    monkeypatch.setattr(st.time, "monotonic", lambda: clock[0])
    assert reap_lost(study, grace_period=50) == []  # first sight: nothing to judge by
    clock[0] += 40
    optuna_adapter.set_system_attr(study, study.trials[far], HEARTBEAT_ATTR, 4e9 + 40)  # beats
    assert reap_lost(study, grace_period=50) == []
    clock[0] += 40  # 80 s since trial 1's beat last moved, 40 s since trial 0's
    assert reap_lost(study, grace_period=50) == [behind]
    assert states(study)[:2] == [(0, "RUNNING"), (1, Outcome.LOST)]
    assert all(key[0] == "s" and key[1] != optuna_adapter.trial_id(study.trials[behind]) for key in st._seen)


def test_a_claim_whose_worker_died_before_naming_itself_is_reaped_after_the_grace(tmp_path, monkeypatch):
    """A worker killed between the claim (WAITING -> RUNNING) and writing its name leaves a trial with no
    owner and no heartbeat: it must not stay RUNNING forever (a `workers=0` launcher would wait on it)."""
    study = new_study(tmp_path, trials=0)
    study.enqueue_trial({"x": 0.5})
    orphan = study.ask().number  # claimed; nothing else written
    clock = [1000.0]
    monkeypatch.setattr(st.time, "monotonic", lambda: clock[0])
    assert reap_lost(study, grace_period=50) == []
    clock[0] += 40
    assert reap_lost(study, grace_period=50) == []
    clock[0] += 20
    assert reap_lost(study, grace_period=50) == [orphan]
    assert states(study) == [(0, Outcome.LOST), (1, "WAITING")]


def test_the_heartbeat_stops_and_says_so_when_the_trial_is_taken(tmp_path):
    study = new_study(tmp_path, trials=0)
    number = running_trial(study, "other-host:1", beat=None)
    t = study.trials[number]
    with st.Heartbeat(study, t, interval=0.05) as beat:
        assert st.release(study, t, "test")
        deadline = time.monotonic() + 5
        while not beat.taken and time.monotonic() < deadline:
            time.sleep(0.01)
    assert beat.taken and study.trials[number].user_attrs["nas_state"] == Outcome.LOST


def test_a_cut_off_journal_survives_a_rerun_of_the_real_command(tmp_path):
    """The issue's reproduction: a search, the journal's last 40 bytes dropped, the same command again."""
    from test_search import TINY, small_corpus

    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "nas.cli.search", *TINY, "n_trials=1", "baselines=[]", "search_space=highway",
           "controller=random", "study=cut", f"out_dir={out}", f"data.path={small_corpus(tmp_path)}",
           f"data.cache_dir={tmp_path / 'cache'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    journal = out / "journal.log"
    journal.write_bytes(journal.read_bytes()[:-40])
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("interrupted write") == 1
    assert len(asides(out)) == 1
    assert len(plain_read(journal)) == journal.read_bytes().count(b"\n")  # Optuna alone reads it all
    study = optuna.load_study(study_name="cut", storage=make_storage(None, out))
    counted = [t for t in study.trials if st.counts_toward_budget(t)]
    assert len(counted) == 1 and all(t.state == TrialState.COMPLETE for t in counted)


def test_trials_that_train_nothing_are_replaced_up_to_a_cap(monkeypatch):
    from nas.search import storage
    from nas.search.storage import counts_toward_budget, replace_if_free

    study = optuna.create_study()
    study.add_trial(create_trial(value=2.0, user_attrs={"nas_state": "complete"}))
    study.add_trial(create_trial(value=2.0, user_attrs={"nas_state": "duplicate", "duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "screened"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "lost"}))
    assert [counts_toward_budget(t) for t in study.trials] == [True, False, False, True, False]
    assert [replace_if_free(study, t) for t in study.trials[:5]] == [False, True, True, False, False]
    assert [t.state for t in study.trials[5:]] == [TrialState.WAITING] * 2  # two placeholders
    monkeypatch.setattr(storage, "MAX_TRIALS_FACTOR", 1)
    monkeypatch.setattr(storage, "MIN_TRIALS_CAP", 7)
    assert replace_if_free(study, study.trials[2]) is False  # 7 trials, 4 that count: at the cap
    monkeypatch.setattr(storage, "MIN_TRIALS_CAP", 8)
    assert replace_if_free(study, study.trials[2]) is True
