"""The committed stubs are what `make protos` generates from the committed .proto files."""

from protos.compile import PROTOS_DIR, compile_protos, generated_files, proto_files


def test_generated_stubs_are_up_to_date(tmp_path):
    compile_protos(tmp_path)
    fresh = {path.name: path.read_bytes() for path in generated_files(tmp_path / "protos")}
    committed = {path.name: path.read_bytes() for path in generated_files(PROTOS_DIR)}
    assert sorted(fresh) == sorted(committed), "run `make protos` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit the result"


def test_every_proto_is_package_tuneloop_v1_with_documented_rpcs():
    for path in proto_files():
        text = path.read_text()
        assert "package tuneloop.v1;" in text, path.name
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if line.strip().startswith(("rpc ", "service ", "message ")):
                assert lines[number - 1].strip().startswith("//"), f"{path.name}:{number + 1} has no doc comment"
