"""``feddx deploy ...`` as a user meets it: exit codes, one-line errors, files written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from feddx.cli import main
from feddx.data.partition import PartitionSpec, partition_cases, write_partition
from feddx.data.schema import Case, Label
from feddx.federated.deploy.local import node_name_for, nodes_from_partition


def _cases() -> list[Case]:
    hospitals = ["Cleveland Clinic", "VA Long Beach", "Hungarian Inst. of Cardiology"]
    return [
        Case(
            case_id=f"c{i}",
            age=50,
            text="chest pain",
            institution=hospitals[i % 3],
            label=Label(diagnosis="angina"),
        )
        for i in range(9)
    ]


@pytest.fixture()
def partition_dir(tmp_path: Path) -> Path:
    spec = PartitionSpec(kind="attribute", attribute="institution")
    out = tmp_path / "shards"
    write_partition(partition_cases(_cases(), spec), out, spec)
    return out


def test_certs_writes_credentials_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(out), "--nodes", "hospital-a,hospital-b"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert stat.S_IMODE((out / "nodes" / "hospital-a.key").stat().st_mode) == 0o600
    assert main(["deploy", "certs", "--out", str(out), "--nodes", "hospital-b,hospital-a"]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_certs_refuses_to_replace_other_credentials_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(out), "--nodes", "hospital-a"]) == 0
    capsys.readouterr()
    assert main(["deploy", "certs", "--out", str(out), "--nodes", "hospital-z"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and "--force" in err and "\n" not in err
    assert main(["deploy", "certs", "--out", str(out), "--nodes", "Hospital Z"]) == 2


def test_certs_can_take_node_names_from_a_partition(tmp_path: Path, partition_dir: Path) -> None:
    out = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(out), "--partition", str(partition_dir)]) == 0
    names = sorted(p.stem for p in (out / "nodes").glob("*.pub"))
    assert names == ["cleveland-clinic", "hungarian-inst-of-cardiology", "va-long-beach"]


def test_nodes_from_a_partition_read_only_their_own_shard(partition_dir: Path) -> None:
    nodes = nodes_from_partition(partition_dir)
    paths = [str(n.node_config["data-path"]) for n in nodes]
    assert len(set(paths)) == len(nodes) == 3
    for node in nodes:
        assert node.node_config["data-source"] == "jsonl"
        assert Path(str(node.node_config["data-path"])).is_file()


def test_node_names_for_institutions_are_dns_labels() -> None:
    assert node_name_for("VA Long Beach") == "va-long-beach"
    assert node_name_for("Univ. Hospitals Zurich/Basel") == "univ-hospitals-zurich-basel"
    assert node_name_for("!!!") == "node"
    assert len(node_name_for("x" * 100)) == 63


def test_k8s_secrets_for_one_hospital_hold_only_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    main(["deploy", "certs", "--out", str(certs), "--nodes", "hospital-a,hospital-b"])
    capsys.readouterr()
    args = ["deploy", "k8s-secrets", "--certs", str(certs), "--nodes", "hospital-a"]
    assert main([*args, "--no-superlink"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == ["feddx-node-hospital-a"]
    assert main(["deploy", "k8s-secrets", "--certs", str(certs), "--nodes", "none"]) == 0
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(capsys.readouterr().out)}
    assert names == {"feddx-superlink-tls", "feddx-superexec-auth", "feddx-node-public-keys"}
    out = tmp_path / "secrets.yaml"
    assert main(["deploy", "k8s-secrets", "--certs", str(certs), "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(list(yaml.safe_load_all(out.read_text()))) == 5


def test_local_without_nodes_or_with_a_bad_app_fails_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    main(["deploy", "certs", "--out", str(certs), "--nodes", "hospital-a"])
    capsys.readouterr()
    assert main(["deploy", "local", "--certs", str(certs)]) == 2
    assert "no nodes" in capsys.readouterr().err
    code = main(
        [
            "deploy", "local", "--certs", str(certs), "--node", "hospital-a=uci-heart",
            "--app", str(tmp_path), "--run-dir", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "is not a Flower app" in capsys.readouterr().err
    assert not (tmp_path / "run" / "pids").exists()
    code = main(
        [
            "deploy", "local", "--certs", str(certs), "--node", "hospital-z=uci-heart",
            "--app", str(tmp_path), "--run-dir", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "no keys for node 'hospital-z'" in capsys.readouterr().err
