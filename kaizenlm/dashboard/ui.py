"""What every dashboard page shares: the API client, empty states, error boxes and the
admin-key confirmation of actions. A page never shows a traceback: every controller call
goes through `load` (reads) or `act` (writes), which turn failures into a sentence that
says what to do next."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import pandas as pd
import streamlit as st

from kaizenlm.dashboard.api_client import ControllerAPI, ControllerError, NotThere, Refused, Unreachable

T = TypeVar("T")
CONFIRM_KEY = "confirm_admin_key"  # the sidebar's password field (session-state key)
_FLASH = "dashboard_flash"


def api() -> ControllerAPI:
    try:
        return ControllerAPI.from_env()
    except ValueError as e:  # ConfigError: a broken kaizen.toml
        st.error(f"Cannot read the configuration: {e}. Fix kaizen.toml, or set KAIZEN_CONTROLLER_URL and "
                 "KAIZEN_ADMIN_KEY.")
        st.stop()
        raise


def empty_state(what: str, next_step: str) -> None:
    """An empty part of a page: what is missing, and what to do about it."""
    st.info(f"{what}\n\n**Next:** {next_step}", icon=":material/lightbulb:")


def load(call: Callable[[], T], missing: str, next_step: str) -> T | None:
    """Run a read; on failure show why (and what to do) instead of a traceback and return None.

    A 404 means "this part is not there yet": `missing` and `next_step` become the empty state.
    """
    try:
        return call()
    except NotThere as e:
        detail = "" if e.missing_endpoint else f" ({e.detail})"
        empty_state(missing + detail, next_step)
    except Unreachable as e:
        st.error(f"The controller does not answer: {e.detail}. Start it with `kaizen up` (or `kaizen controller`), "
                 "or point the dashboard at it with KAIZEN_CONTROLLER_URL.", icon=":material/cloud_off:")
        st.stop()
    except Refused:
        st.error("The controller refused the dashboard's admin key. Start `kaizen dashboard` with the controller's "
                 "key (auth.admin_key in kaizen.toml or KAIZEN_ADMIN_KEY).", icon=":material/key_off:")
        st.stop()
    except ControllerError as e:
        st.error(f"The controller answered {e.status}: {e.detail}")
    return None


def typed_key() -> str:
    return (st.session_state.get(CONFIRM_KEY) or "").strip()


def key_sidebar() -> None:
    """The password field that actions need, so a person confirms each change with the key."""
    st.sidebar.text_input("Admin key (to promote, roll back or run jobs)", type="password", key=CONFIRM_KEY,
                          help="Actions send the key you type here, not the dashboard's own: the controller checks it.")


def needs_key_note() -> None:
    if not typed_key():
        st.caption("Type the admin key in the sidebar to enable these buttons.")


def act(call: Callable[[str], dict], done: str, key: str | None = None) -> dict | None:
    """Run a write with the typed key (or `key`: a reviewer's key typed on the page); on success
    remember `done` and rerun so the page shows the new state."""
    which = "key" if key else "admin key"
    key = key or typed_key()
    if not key:
        st.warning("Type the admin key in the sidebar first: every change needs it.")
        return None
    try:
        result = call(key)
    except Refused as e:
        st.error(f"The controller refused that {which}; nothing changed ({e.detail}).", icon=":material/key_off:")
        return None
    except Unreachable as e:
        st.error(f"The controller does not answer ({e.detail}); nothing changed.")
        return None
    except ControllerError as e:
        st.error(f"Not done: {e.detail}")
        return None
    st.session_state[_FLASH] = done
    st.rerun()
    return result


def flash() -> None:
    """Show (once) the outcome of the last action."""
    message = st.session_state.pop(_FLASH, None)
    if message:
        st.success(message, icon=":material/check_circle:")


def when(value: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM' UTC (or '' when absent)."""
    if not value:
        return ""
    try:
        return pd.Timestamp(datetime.fromisoformat(value)).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")
    except (ValueError, TypeError):
        return str(value)


def number(value: object, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def table(rows: list[dict], columns: list[str] | None = None, **kwargs) -> pd.DataFrame:
    """Show rows as a full-width table (only `columns`, in that order, when given); returns the frame."""
    frame = pd.DataFrame(rows)
    if columns is not None:
        frame = frame.reindex(columns=columns)
    st.dataframe(frame, hide_index=True, width="stretch", **kwargs)
    return frame
