"""A clinician's browser session against Label Studio, without the browser.

``LabelStudioWebUser`` signs up / logs in through the real Django forms (session cookie + CSRF,
as the browser does) and then makes the same REST calls the labelling UI makes: ``GET
/api/projects/{id}/next`` for the next task and ``POST /api/tasks/{id}/annotations`` with the
Ranker or Choices result. Tests and ``slicerank bench service`` use it to simulate raters.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _result(kind: str, value: dict[str, Any], from_name: str, to_name: str) -> list[dict]:
    """One manual region of an annotation ``result``: what the editor saves for a tag."""
    return [
        {
            "id": uuid.uuid4().hex[:10],
            "from_name": from_name,
            "to_name": to_name,
            "type": kind,
            "origin": "manual",
            "value": value,
        }
    ]


def ranker_result(order: list[str], *, from_name: str = "order", to_name: str = "slices"):
    """The annotation ``result`` the Ranker tag saves for a list ordered top (basal) first."""
    return _result("ranker", {"ranker": {from_name: list(order)}}, from_name, to_name)


def typed_result(text: str, *, from_name: str = "typed", to_name: str = "grid"):
    """The annotation ``result`` of the Rank page's typed-order field (``TextArea``)."""
    return _result("textarea", {"text": [text]}, from_name, to_name)


def choices_result(label: str, *, from_name: str = "slice_class", to_name: str = "image"):
    """The annotation ``result`` of a single-choice ``Choices`` tag."""
    return _result("choices", {"choices": [label]}, from_name, to_name)


class LabelStudioWebUser:
    """One logged-in Label Studio user (session cookie), e.g. a simulated clinician."""

    def __init__(self, url: str, email: str, password: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.email = email
        self.password = password
        self.http = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)
        self.user_id: int | None = None

    def _form(self, path: str, fields: dict[str, str]) -> httpx.Response:
        page = self.http.get(path)
        match = _CSRF_INPUT.search(page.text)
        if not match:
            raise RuntimeError(f"{self.url}{path} has no CSRF token (status {page.status_code})")
        data = {"csrfmiddlewaretoken": match.group(1), **fields}
        return self.http.post(path, data=data, headers={"Referer": f"{self.url}{path}"})

    def signup(self, invite_token: str | None = None) -> LabelStudioWebUser:
        """Create the account through the sign-up form (it joins the server's organisation).

        ``invite_token``: the token of the organisation's invite link (``GET /api/invite``),
        which a server with sign-up without a link disabled requires.
        """
        path = "/user/signup/" + (f"?token={invite_token}" if invite_token else "")
        resp = self._form(
            path, {"email": self.email, "password": self.password, "allow_newsletters": "false"}
        )
        if resp.status_code not in (302, 303):
            raise RuntimeError(f"sign-up of {self.email} failed ({resp.status_code})")
        return self._whoami()

    def login(self) -> LabelStudioWebUser:
        """Log in through the login form."""
        resp = self._form("/user/login/", {"email": self.email, "password": self.password})
        if resp.status_code not in (302, 303):
            raise RuntimeError(f"login of {self.email} failed ({resp.status_code})")
        return self._whoami()

    def _whoami(self) -> LabelStudioWebUser:
        me = self.http.get("/api/current-user/whoami")
        me.raise_for_status()
        self.user_id = me.json()["id"]
        return self

    def _headers(self) -> dict[str, str]:
        return {"X-CSRFToken": self.http.cookies.get("csrftoken", ""), "Referer": self.url}

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        """The task the labelling stream shows next (``None`` when the queue is empty)."""
        resp = self.http.get(f"/api/projects/{project_id}/next")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def submit(
        self, task_id: int, project_id: int, result: list[dict], *, lead_time: float = 30.0
    ) -> dict[str, Any]:
        """Submit an annotation the way the editor's Submit button does; returns it."""
        resp = self.http.post(
            f"/api/tasks/{task_id}/annotations?project={project_id}",
            json={"result": result, "lead_time": lead_time, "was_cancelled": False},
            headers=self._headers(),
        )
        resp.raise_for_status()
        return resp.json()

    def skip(self, task_id: int, project_id: int) -> dict[str, Any]:
        """Skip a task (the editor's Skip button: a cancelled, empty annotation)."""
        resp = self.http.post(
            f"/api/tasks/{task_id}/annotations?project={project_id}",
            json={"result": [], "was_cancelled": True, "lead_time": 1.0},
            headers=self._headers(),
        )
        resp.raise_for_status()
        return resp.json()

    def update(self, annotation_id: int, result: list[dict]) -> dict[str, Any]:
        """Edit a submitted annotation (the editor's Update button)."""
        resp = self.http.patch(
            f"/api/annotations/{annotation_id}", json={"result": result}, headers=self._headers()
        )
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()
