from pathlib import Path
from conftest import fake_model, events_of

def test_smoke(modelberth, tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    mb = modelberth({"models": {"fake": fake_model(ev, aliases=["f2"])}})
    with mb.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "f2", "messages": []})
        print(r.status_code, r.text[:300])
        assert r.status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "fake", "stream": True, "chunks": 3})
        print(r.text)
        print(c.get("/api/models").json())
        print(c.get("/api/models/fake/logs").text)
    print(events_of(ev, "start"))
    print(mb.log()[-2000:])
