"""Checkpoints and the cache of trained models: atomic writes, the lock, the key, the random state."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from llm_lib import checkpoints
from llm_lib.checkpoints import exclusive_lock, load_checkpoint, load_or_train, save_checkpoint
from llm_lib.history import TrainingHistory
from llm_lib.model import GPTConfig, GPTModel

TINY = GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
ROOT = Path(__file__).resolve().parents[1]


class TinyRecipe:
    """The least a recipe needs for load_or_train: dataset, cfg, seed and key()."""

    dataset, cfg, seed = "tiny.txt", TINY, 7

    def key(self):
        return checkpoints.recipe_hash({"what": "tiny", "seed": self.seed})


def seeded_training(recipe, device="cpu", progress=True, verbose=False):
    torch.manual_seed(recipe.seed)
    model = GPTModel(recipe.cfg)
    torch.rand(1000)  # training draws random numbers: shuffling, dropout
    history = TrainingHistory()
    history.record(step=1, epoch=1.0, seen=8, train_loss=1.0, val_loss=1.0)
    return model, history


def weights_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_interrupted_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"model{suffix}"
    torch.manual_seed(0)
    old = GPTModel(TINY)
    save_checkpoint(path, old, metadata={"version": "old"})
    old_bytes = path.read_bytes()

    def half_then_interrupt(real):
        def write(obj, target, *args, **kwargs):
            real(obj, target, *args, **kwargs)
            data = Path(target).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])  # the process dies half-way through
            raise KeyboardInterrupt

        return write

    if suffix == ".safetensors":
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", half_then_interrupt(safetensors.torch.save_file))
    else:
        monkeypatch.setattr(torch, "save", half_then_interrupt(torch.save))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, GPTModel(TINY), metadata={"version": "new"})
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    monkeypatch.undo()
    fresh = GPTModel(TINY)
    assert load_checkpoint(path, fresh)["version"] == "old"
    for name, tensor in old.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)


def test_an_interrupted_first_save_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.torch

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "model.safetensors", GPTModel(TINY))
    assert list(tmp_path.iterdir()) == []


def test_load_or_train_reads_the_checkpoint_while_holding_the_lock(tmp_path, monkeypatch):
    from filelock import FileLock, Timeout

    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    recipe = TinyRecipe()
    path = checkpoints.checkpoint_path(recipe)
    load_or_train(recipe, seeded_training)  # now cached
    held_during_read = []
    real_load = checkpoints.load_checkpoint

    def load_and_probe(*args, **kwargs):
        def probe():  # another thread (in another process: another notebook) tries to take the lock
            try:
                with FileLock(str(path.with_suffix(".lock")), timeout=0):
                    held_during_read.append(False)
            except Timeout:
                held_during_read.append(True)

        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_checkpoint", load_and_probe)
    load_or_train(recipe, seeded_training)
    assert held_during_read == [True]


def test_cold_and_warm_cache_leave_the_same_random_state(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    after = []
    for _ in ("cold", "warm"):
        torch.manual_seed(2024)
        model, _ = load_or_train(TinyRecipe(), seeded_training)
        after.append(torch.rand(5))
        assert not model.training
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=0)


def test_the_key_changes_with_the_training_code_version(monkeypatch):
    key = TinyRecipe().key()
    assert len(key) == 12 and key == TinyRecipe().key()
    monkeypatch.setattr(checkpoints, "TRAINING_CODE_VERSION", checkpoints.TRAINING_CODE_VERSION + 1)
    assert TinyRecipe().key() != key


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    recipe = TinyRecipe()
    save_checkpoint(checkpoints.checkpoint_path(recipe), GPTModel(TINY),
                    metadata={"recipe_key": "somethingelse", "history": {}})
    with pytest.raises(ValueError, match="not written by this recipe"):
        load_or_train(recipe, seeded_training)


def test_parallel_threads_take_turns_under_the_lock(tmp_path):
    inside, overlaps = [], []

    def worker():
        with exclusive_lock(tmp_path / "thing.safetensors"):
            overlaps.append(len(inside))
            inside.append(1)
            threading.Event().wait(0.05)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [0, 0, 0, 0]


def test_llm_lib_works_where_fcntl_does_not_exist(tmp_path):
    # Windows has no fcntl: every module must import, and the cache lock must still work.
    code = (
        "import sys, pathlib, pkgutil, importlib, warnings\n"
        "sys.modules['fcntl'] = None\n"  # makes 'import fcntl' raise ImportError
        "warnings.simplefilter('ignore')\n"
        "import llm_lib\n"
        "for m in pkgutil.walk_packages(llm_lib.__path__, 'llm_lib.'):\n"
        "    importlib.import_module(m.name)\n"
        "from llm_lib.checkpoints import exclusive_lock\n"
        f"with exclusive_lock(pathlib.Path({str(tmp_path)!r}) / 'x.safetensors'):\n"
        "    print('locked')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "locked"
