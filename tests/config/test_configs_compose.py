"""Every shipped YAML composes, resolves, and matches the code it instantiates (STYLE item 6).

For each config under ``config/`` (the primary config, and the primary config with each option of
each group, e.g. ``task=libero_goal_rl``), every ``_target_`` node is checked against the callable
it names, the way torchtune's ``config/_validate.py`` does:

* the target imports (a missing module is a failure, not a skip: a config that names code which
  does not exist cannot run);
* every key of the node is a parameter of the target (or the target takes ``**kwargs``), so a
  renamed or misspelled argument fails here instead of at the start of a GPU job;
* every required parameter the node leaves out is one the training loop supplies at
  instantiate time (``LOOP_SUPPLIED`` below, mirroring ``ript/training/loop.py``).

Nothing is instantiated: no model, simulator or dataset is built.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

# Arguments ``build_training_run`` (ript/training/loop.py) passes when it instantiates the node
# at this config path. A required parameter missing from a node must be listed here.
LOOP_SUPPLIED: dict[str, set[str]] = {
    # optimizer factories: called with params=policy.trainable_params["model" | "header"]
    "algo.optimizer_factory": {"params"},
    "algo.header_optimizer_factory": {"params"},
    # one scheduler per optimizer: scheduler_factory(optimizer=...)
    "algo.scheduler_factory": {"optimizer"},
    # built after the runner: this rank's runner, its share of the tasks, and the per-rank
    # demo batch (global train_dataloader.batch_size // world_size)
    "algo.rollout_generator_factory": {"env_runner", "task_names_to_use", "demo_batch_size"},
    # built last: the rollout generator and the instantiated reward function
    "algo.rl_optimizer_factory": {"rollout_generator", "reward_function"},
    # dataset and runner are rebuilt with this rank's share of the tasks
    "task.dataset": {"task_names_to_use"},
    "task.env_runner": {"task_names_to_use"},
    "algo.env_runner": {"task_names_to_use"},
}


def _config_cases() -> list[tuple[str, list[str]]]:
    """(primary config name, overrides) for every YAML file under config/."""
    primaries = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    cases = [(name, []) for name in primaries]
    for path in sorted(CONFIG_DIR.glob("*/**/*.yaml")):
        group = path.parent.relative_to(CONFIG_DIR).as_posix()
        for primary in primaries:
            cases.append((primary, [f"{group}={path.stem}"]))
    return cases


CASES = _config_cases()


def _case_id(case: tuple[str, list[str]]) -> str:
    name, overrides = case
    return " ".join([name, *overrides])


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted path, node) for every dict with a ``_target_``, outermost first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def _signature_problems(path: str, node: dict) -> list[str]:
    target = node["_target_"]
    try:
        fn = get_object(target)
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return [f"{path}: _target_ {target} cannot be imported ({type(error).__name__}: {error})"]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as error:
        return [f"{path}: cannot read the signature of {target} ({error})"]

    problems = []
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {name for name, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    given = set(node) - HYDRA_KEYS
    if not takes_kwargs:
        unknown = sorted(given - named)
        if unknown:
            problems.append(f"{path}: {target} has no parameter(s) {unknown}; it accepts {sorted(named)}")

    supplied = LOOP_SUPPLIED.get(path, set())
    if not takes_kwargs:
        not_accepted = sorted(supplied - named)
        if not_accepted:
            problems.append(f"{path}: the training loop passes {not_accepted} but {target} does not accept them")
    n_positional = len(node.get("_args_", []))
    required = [
        name for i, (name, p) in enumerate(params.items())
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and i >= n_positional
    ]
    missing = sorted(set(required) - given - supplied)
    if missing:
        kind = "_partial_ node" if node.get("_partial_") else "node"
        problems.append(
            f"{path}: {kind} for {target} leaves required parameter(s) {missing} unset and the training "
            f"loop does not supply them (it supplies {sorted(supplied) or 'nothing'} here)"
        )
    if node.get("_partial_") and path not in LOOP_SUPPLIED:
        problems.append(f"{path}: _partial_ node for {target} that the training loop never completes")
    return problems


@pytest.fixture(scope="module")
def hydra_compose():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        # output_dir defaults to ${hydra:runtime.output_dir}, which only exists inside @hydra.main.
        yield lambda name, overrides: compose(name, overrides=["output_dir=/tmp/ript_cfg_test", *overrides])


def test_every_yaml_file_is_covered():
    """A new YAML (or a new group folder) is picked up by the cases above, not silently skipped."""
    covered = {CONFIG_DIR / f"{name}.yaml" for name, _ in CASES}
    for _, overrides in CASES:
        for override in overrides:
            group, option = override.split("=")
            covered.add(CONFIG_DIR / group / f"{option}.yaml")
    assert covered == set(CONFIG_DIR.rglob("*.yaml"))
    assert any(o == ["task=libero_goal_rl"] for _, o in CASES) and any(o == ["algo=pi0_cfg_rl"] for _, o in CASES)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_config_composes_and_matches_its_targets(hydra_compose, case):
    name, overrides = case
    cfg = hydra_compose(name, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # interpolation errors name the key

    nodes = list(_target_nodes(resolved))
    assert nodes, f"{_case_id(case)} has no _target_ nodes"
    problems = [problem for path, node in nodes for problem in _signature_problems(path, node)]
    assert not problems, f"{_case_id(case)}:\n" + "\n".join(problems)


def test_loop_supplied_paths_exist(hydra_compose):
    """LOOP_SUPPLIED must track the config layout; a stale entry would hide a missing argument."""
    resolved = OmegaConf.to_container(hydra_compose("train_base_rl_openvla_oft", []), resolve=True)
    paths = dict(_target_nodes(resolved))
    stale = sorted(set(LOOP_SUPPLIED) - set(paths))
    assert not stale, f"LOOP_SUPPLIED names config paths with no _target_ node: {stale}"


def test_default_run_is_the_embedded_smoke_setup(hydra_compose):
    """No overrides = the newcomer's default: tiny PI0 (no checkpoint) on one LIBERO task."""
    cfg = hydra_compose("train_base_rl_openvla_oft", [])
    assert cfg.algo.policy.pretrained_path is None
    assert cfg.task.name == "libero_smoke" and len(cfg.task.task_names_to_use) == 1
    assert cfg.algo.open_loop == cfg.algo.n_action_steps == 50  # 50-step chunks executed open loop (README)


@pytest.mark.parametrize("task", sorted(p.stem for p in (CONFIG_DIR / "task").glob("libero_*.yaml")))
def test_every_libero_task_renders_at_openpis_256_px(hydra_compose, task):
    """pi0_libero was trained on, and published with, 256-px renders resized to 224 (issue 14)."""
    runner = hydra_compose("train_base_rl_openvla_oft", [f"task={task}"]).task.env_runner
    assert OmegaConf.select(runner, "camera_height") == OmegaConf.select(runner, "camera_width") == 256
