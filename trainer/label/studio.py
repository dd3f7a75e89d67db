"""A small async client of the Label Studio REST API: the calls push and pull make, nothing more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from postlens.settings import Settings

EXPORT_TIMEOUT_S = 600  # an export of a large project is one response


class LabelStudioError(RuntimeError):
    """Label Studio refused or failed a request (status and body in the message)."""


class LabelStudio:
    def __init__(self, settings: Settings) -> None:
        self.url, token = settings.label_studio_endpoint()
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Token {token}"}, timeout=aiohttp.ClientTimeout(total=EXPORT_TIMEOUT_S)
        )
        self._emails: dict[int, str] = {}

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> LabelStudio:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._session.request(method, f"{self.url}{path}", **kwargs) as response:
            body = await response.read()
            if response.status >= 400:
                raise LabelStudioError(
                    f"{method} {path}: HTTP {response.status}: {body[:500].decode(errors='replace')}"
                )
            return await response.json(content_type=None) if body else None

    async def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the project called ``title``, created — or its labeling config updated — to ``label_config``."""
        found = await self.request("GET", "/api/projects", params={"title": title, "page_size": 100})
        projects = found["results"] if isinstance(found, dict) else found
        for project in projects:
            if project["title"] == title:
                if project.get("label_config") != label_config:
                    await self.request("PATCH", f"/api/projects/{project['id']}", json={"label_config": label_config})
                return int(project["id"])
        created = await self.request("POST", "/api/projects", json={"title": title, "label_config": label_config})
        return int(created["id"])

    async def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Create tasks (with their predictions) in one request; Label Studio's import summary."""
        return await self.request("POST", f"/api/projects/{project_id}/import", json=list(tasks))

    async def annotated_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project that has annotations, with them (skipped ones too), as Label Studio exports."""
        return await self.request(
            "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON", "download_all_tasks": "false"}
        )

    async def task(self, task_id: int) -> dict[str, Any]:
        return await self.request("GET", f"/api/tasks/{task_id}")

    async def email(self, user: int | dict[str, Any] | None) -> str | None:
        """An annotation's ``completed_by`` (a user id, or the user as exports give it) → the user's email."""
        if isinstance(user, dict):
            return user.get("email")
        if user is None:
            return None
        if user not in self._emails:
            self._emails[user] = (await self.request("GET", f"/api/users/{user}"))["email"]
        return self._emails[user]

    async def ensure_webhook(self, project_id: int, url: str) -> None:
        """Have Label Studio call ``url`` with the annotation whenever one is created or updated in the project."""
        hooks = await self.request("GET", "/api/webhooks", params={"project": project_id})
        if any(hook["url"] == url for hook in hooks):
            return
        await self.request(
            "POST",
            "/api/webhooks",
            json={
                "project": project_id,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
            },
        )
