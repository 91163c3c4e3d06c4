"""Launch files and package metadata are consistent with the code, checked without `launch_ros`.

`launch`/`launch_ros` are not installable from PyPI, so the launch files are read as Python ASTs:
every node they start must be a console_scripts entry point of wmpo_ros/setup.py, named as the
node names itself, given only parameters that node declares, and every launch argument must be a
parameter of the table it names. The in-process bring-up (`wmpo robot|teleop|deploy`) must start
the same executables, for every robot config. Then each launch file's `launch_setup` is run, with
stand-ins for the few `launch`/`launch_ros` classes it touches (a LaunchConfiguration reads a
dict; a Node keeps its arguments), against `wmpo_ros.graph.bringup_graph`: for every robot config
and every launch argument at its default and at another value, both start the same nodes with the
same parameter values.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from wmpo_core.robot_config import GymSimDriver, LeRobotDriver, config_search_path, load_robot_config
from wmpo_ros import params
from wmpo_ros.graph import BRINGUPS, NodeSpec, bringup_graph, launch_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ros_ws" / "src" / "wmpo_ros"
LAUNCH_FILES = {b: launch_file(b) for b in BRINGUPS}
CONFIGS = sorted(p.stem for d in config_search_path() for p in d.glob("*.yaml"))


def console_scripts() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in value.elts]
                    return dict((part.strip() for part in e.split("=")) for e in entries)
    raise AssertionError("setup.py declares no console_scripts")


def table(name: str) -> params.NodeParams:
    value = getattr(params, name, None)
    assert isinstance(value, params.NodeParams), f"'{name}' is not a parameter table in wmpo_ros.params"
    return value


def launch_arguments(tree: ast.Module) -> dict[str, params.NodeParams]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ARGUMENTS" for t in node.targets
        ):
            result = {}
            for item in node.value.elts:
                table_name, param_name = item.elts[0].id, ast.literal_eval(item.elts[1])
                table(table_name)[param_name]  # raises if the table does not declare it
                result[param_name] = table(table_name)
            return result
    raise AssertionError("no ARGUMENTS list")


def node_calls(tree: ast.Module) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Node"
    ]


def kwarg(call: ast.Call, name: str) -> ast.expr:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    raise AssertionError(f"Node(...) at line {call.lineno} has no {name}=")


@pytest.mark.parametrize("bringup", BRINGUPS)
def test_launch_file_nodes_exist_and_get_only_declared_parameters(bringup):
    tree = ast.parse(LAUNCH_FILES[bringup].read_text())
    scripts = console_scripts()
    arguments = launch_arguments(tree)
    assert "robot" in arguments
    assert {"generate_launch_description", "launch_setup"} <= {
        f.name for f in tree.body if isinstance(f, ast.FunctionDef)
    }
    calls = node_calls(tree)
    assert calls, "the launch file starts no node"
    for call in calls:
        assert ast.literal_eval(kwarg(call, "package")) == "wmpo_ros"
        executable = ast.literal_eval(kwarg(call, "executable"))
        assert executable in scripts, f"'{executable}' is not a console_scripts entry point of wmpo_ros"
        assert scripts[executable].startswith("wmpo_ros.") and scripts[executable].endswith(":main")
        node = params.NODES[executable]
        assert ast.literal_eval(kwarg(call, "name")) == node.node_name
        (parameters,) = kwarg(call, "parameters").elts
        for key, value in zip(parameters.keys, parameters.values, strict=True):
            name = ast.literal_eval(key)
            assert name in node.names or name in params.BUILTIN_PARAMETERS, (
                f"{executable} declares no parameter '{name}'"
            )
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "value":
                table_name, arg_name = value.args[1].id, ast.literal_eval(value.args[2])
                assert arg_name in arguments, f"'{arg_name}' is read but not declared as a launch argument"
                assert table(table_name)[arg_name].type is node[name].type


@pytest.mark.parametrize("bringup", BRINGUPS)
def test_launch_argument_defaults_parse_and_name_a_robot_config(bringup):
    arguments = launch_arguments(ast.parse(LAUNCH_FILES[bringup].read_text()))
    for name, node in arguments.items():
        assert node[name].parse(node[name].launch_default) == node[name].default
    load_robot_config(arguments["robot"]["robot"].default)


@pytest.mark.parametrize("bringup", ["teleop", "deploy"])
def test_teleop_and_deploy_include_the_arm(bringup):
    assert "robot.launch.py" in LAUNCH_FILES[bringup].read_text()


@pytest.mark.parametrize("bringup", BRINGUPS)
def test_cli_graph_starts_what_the_launch_files_start_for_every_config(bringup):
    scripts = console_scripts()
    launched = {
        ast.literal_eval(kwarg(c, "executable"))
        for c in node_calls(ast.parse(LAUNCH_FILES[bringup].read_text()))
    }
    if bringup != "robot":
        launched |= {
            ast.literal_eval(kwarg(c, "executable"))
            for c in node_calls(ast.parse(LAUNCH_FILES["robot"].read_text()))
        }
    started: set[str] = set()
    for name in CONFIGS:
        config = load_robot_config(name)
        values = (
            {"policy": "hold:", "device": "keyboard", "learner_url": "http://127.0.0.1:8765"}
            if bringup != "robot"
            else {}
        )
        graph = bringup_graph(bringup, config, values)
        for spec in graph:
            assert spec.executable in scripts
            node = params.NODES[spec.executable]
            assert set(spec.parameters) <= set(node.names) | set(params.BUILTIN_PARAMETERS)
            for key, value in spec.parameters.items():
                if key in node.names:
                    assert type(value) is node[key].type, f"{spec.executable}.{key} = {value!r}"
            assert spec.parameters.get("robot", name) == name
            assert spec.parameters.get("use_sim_time", False) == (
                isinstance(config.driver, GymSimDriver) and spec.executable != "sim_arm"
            )
        drivers = [s.executable for s in graph if s.executable in ("sim_arm", "lerobot_bridge")]
        assert drivers == (
            ["sim_arm"]
            if isinstance(config.driver, GymSimDriver)
            else ["lerobot_bridge"]
            if isinstance(config.driver, LeRobotDriver)
            else []
        )
        started |= {s.executable for s in graph}
    assert started == launched


def test_every_node_parameter_default_round_trips_through_its_launch_string():
    for node in params.NODES.values():
        for p in node.params:
            assert p.parse(p.launch_default) == p.default


def test_package_metadata():
    for package in ("wmpo_ros", "wmpo_core"):
        root = ROOT / "ros_ws" / "src" / package
        xml = ET.parse(root / "package.xml").getroot()
        assert xml.get("format") == "3" and xml.findtext("name") == package
        assert xml.find("export/build_type").text == "ament_python"
        assert (root / "resource" / package).is_file()
        assert f"script_dir=$base/lib/{package}" in (root / "setup.cfg").read_text()
    # Launch files are package data of wmpo_ros (and go to share/wmpo_ros/launch for `ros2 launch`),
    # robot configs package data of wmpo_core; both are found through importlib.resources.
    setup_text = (PACKAGE / "setup.py").read_text()
    assert 'glob(f"{PACKAGE}/launch/*.launch.py")' in setup_text and '"launch/*.launch.py"' in setup_text
    assert '"robot_configs/*.yaml"' in (ROOT / "ros_ws" / "src" / "wmpo_core" / "setup.py").read_text()
    configs = ROOT / "ros_ws" / "src" / "wmpo_core" / "wmpo_core" / "robot_configs"
    for path in LAUNCH_FILES.values():
        assert path.parent == PACKAGE / "wmpo_ros" / "launch" and path.is_file()
    assert config_search_path() == [configs]  # no $WMPO_ROBOT_CONFIG_PATH: the package's own
    # The repository paths users know stay, as committed relative symlinks to the package data.
    for link, target in (("launch", PACKAGE / "wmpo_ros" / "launch"), ("robot_configs", configs)):
        assert (ROOT / link).is_symlink() and not Path((ROOT / link).readlink()).is_absolute()
        assert (ROOT / link).resolve() == target.resolve()
    assert sorted(p.name for p in (ROOT / "launch").glob("*.launch.py")) == sorted(
        p.name for p in LAUNCH_FILES.values()
    )
    assert {p.stem for p in configs.glob("*.yaml")} == set(CONFIGS)


# ------------------------------------------------------------------ launch files run against the graph


def _stand_in_launch_modules() -> dict[str, ModuleType]:
    """The names the launch files import; only LaunchConfiguration and Node matter to launch_setup."""

    class LaunchConfiguration:
        def __init__(self, name: str):
            self.name = name

        def perform(self, context: dict[str, str]) -> str:
            return context[self.name]

    class Node:
        def __init__(self, **kwargs: Any):
            self.kwargs = kwargs

    def inert(*args: Any, **kwargs: Any) -> None:
        return None

    contents = {
        "launch": {"LaunchDescription": inert},
        "launch.actions": dict.fromkeys(
            ("DeclareLaunchArgument", "IncludeLaunchDescription", "OpaqueFunction", "SetEnvironmentVariable"),
            inert,
        ),
        "launch.launch_description_sources": {"PythonLaunchDescriptionSource": inert},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": inert},
    }
    modules = {}
    for name, attributes in contents.items():
        modules[name] = ModuleType(name)
        vars(modules[name]).update(attributes)
    return modules


def _launched(bringup: str, arguments: dict[str, str], monkeypatch) -> list[NodeSpec]:
    """What `ros2 launch wmpo_ros <bringup>.launch.py` starts with these arguments (teleop and deploy
    include robot.launch.py first)."""
    for name, module in _stand_in_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    specs = []
    for name in ["robot"] + ([bringup] if bringup != "robot" else []):
        spec = importlib.util.spec_from_file_location(f"launch_file_{name}", LAUNCH_FILES[name])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for node in module.launch_setup(arguments):
            (parameters,) = node.kwargs["parameters"]
            specs.append(NodeSpec(node.kwargs["executable"], parameters))
    return specs


def _effective(specs: list[NodeSpec]) -> list[tuple[str, dict[str, Any]]]:
    """Each node with the parameter values it runs with: what it was given, else its defaults."""
    return [
        (s.executable, {**params.NODES[s.executable].defaults(), "use_sim_time": False, **s.parameters})
        for s in specs
    ]


_OTHER_STRINGS = {"device": "keyboard", "swap_at": "chunk", "learner_url": "http://127.0.0.1:8765"}


def _other_value(param: params.Param) -> str:
    """A valid launch string for `param` that is not its default."""
    if param.type is bool:
        return str(not param.default).lower()
    if param.type in (int, float):
        return str(param.type(param.default * 2 + 1))
    return _OTHER_STRINGS.get(param.name, f"other_{param.name}")


@pytest.mark.parametrize("bringup", BRINGUPS)
@pytest.mark.parametrize("variant", ["defaults", "every_argument_changed"])
def test_launch_files_start_exactly_the_in_process_graph(bringup, variant, monkeypatch):
    tables = {}
    for name in ["robot", bringup]:
        tables.update(launch_arguments(ast.parse(LAUNCH_FILES[name].read_text())))
    for name in CONFIGS:
        arguments = {
            arg: (table[arg].launch_default if variant == "defaults" else _other_value(table[arg]))
            for arg, table in tables.items()
        }
        arguments["robot"] = name
        launched = _effective(_launched(bringup, arguments, monkeypatch))
        in_process = _effective(bringup_graph(bringup, load_robot_config(name), arguments))
        assert launched == in_process, f"{bringup}.launch.py with {arguments} for robot config '{name}'"
        # Only a ros2_control arm's bring-up of the arm alone starts nothing of ours.
        assert launched or (bringup == "robot" and load_robot_config(name).driver.kind == "ros2_control")
