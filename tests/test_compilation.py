"""sap_jax.compilation: where the persistent compilation cache lives, and that it works."""

import json
import os
import subprocess
import sys

import jax
import pytest

from sap_jax import compilation

OPTIONS = (
  "jax_compilation_cache_dir",
  "jax_persistent_cache_min_compile_time_secs",
  "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture
def jax_config():
  """Restores the cache options afterwards, so no other test sees a cache."""
  old = {name: jax.config.values[name] for name in OPTIONS}
  yield
  for name, value in old.items():
    jax.config.update(name, value)


@pytest.fixture
def env(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  return monkeypatch


def test_default_follows_xdg_cache_home(env, tmp_path):
  assert compilation.default_cache_dir() == str(tmp_path / "xdg" / "sap_jax" / "jax")
  assert compilation.resolve_cache_dir() == str(tmp_path / "xdg" / "sap_jax" / "jax")
  env.delenv("XDG_CACHE_HOME")
  env.setenv("HOME", str(tmp_path / "home"))
  assert compilation.default_cache_dir() == str(tmp_path / "home" / ".cache" / "sap_jax" / "jax")


def test_argument_beats_environment_beats_default(env, tmp_path):
  env.setenv(compilation.ENV_VAR, str(tmp_path / "from_env"))
  assert compilation.resolve_cache_dir() == str(tmp_path / "from_env")
  assert compilation.resolve_cache_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
  assert compilation.resolve_cache_dir("~/c") == os.path.expanduser("~/c")
  env.setenv(compilation.ENV_VAR, "")  # empty: unset
  assert compilation.resolve_cache_dir() == compilation.default_cache_dir()


def test_off_disables(env, jax_config, tmp_path):
  before = {name: jax.config.values[name] for name in OPTIONS}
  assert compilation.enable_persistent_cache("off") is None
  env.setenv(compilation.ENV_VAR, "OFF")
  assert compilation.enable_persistent_cache() is None
  assert compilation.resolve_cache_dir(str(tmp_path)) == str(tmp_path)  # the argument wins
  assert {name: jax.config.values[name] for name in OPTIONS} == before
  assert not (tmp_path / "xdg").exists()


def test_enable_sets_the_jax_options(env, jax_config, tmp_path):
  folder = compilation.enable_persistent_cache(str(tmp_path / "cache"))
  assert folder == str(tmp_path / "cache") and os.path.isdir(folder)
  assert jax.config.values["jax_compilation_cache_dir"] == folder
  assert jax.config.values["jax_persistent_cache_min_compile_time_secs"] == 0
  assert jax.config.values["jax_persistent_cache_min_entry_size_bytes"] == 0


CHILD = """
import json, jax, jax.numpy as jnp
from sap_jax import compilation
folder = compilation.enable_persistent_cache()
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"folder": folder, "events": events}))
"""


def test_a_second_process_hits_the_cache(tmp_path):
  cache = tmp_path / "cache"
  env = {**os.environ, compilation.ENV_VAR: str(cache), "JAX_PLATFORMS": "cpu"}

  def run():
    out = subprocess.run(
      [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])

  first = run()
  assert first["folder"] == str(cache)
  files = sorted(p.name for p in cache.iterdir())
  assert files, "the first process wrote nothing to the cache"
  assert "/jax/compilation_cache/cache_hits" not in first["events"]
  second = run()
  assert "/jax/compilation_cache/cache_hits" in second["events"]
  assert sorted(p.name for p in cache.iterdir()) == files  # nothing new compiled


def test_an_unusable_folder_is_named_in_a_warning_and_the_run_goes_on(env, jax_config, tmp_path):
  """A file where the folder should be, or a read-only file system: a warning naming the
  path and where it came from, no cache, nothing changed."""
  before = {name: jax.config.values[name] for name in OPTIONS}
  (tmp_path / "afile").write_text("mine")
  with pytest.warns(UserWarning, match=r"cache .*afile \(--compilation-cache\) is a file, not"):
    assert (
      compilation.enable_persistent_cache(str(tmp_path / "afile"), "--compilation-cache") is None
    )
  assert (tmp_path / "afile").read_text() == "mine"

  class ReadOnly:
    f_flag = os.ST_RDONLY

  env.setattr(compilation.os, "statvfs", lambda path: ReadOnly())
  env.setenv(compilation.ENV_VAR, str(tmp_path / "ro"))
  with pytest.warns(
    UserWarning, match=r"ro \(from \$SAP_JAX_COMPILATION_CACHE\) is on a read-only"
  ):
    assert compilation.enable_persistent_cache() is None
  assert {name: jax.config.values[name] for name in OPTIONS} == before
