"""The web console at ``/console`` (docs/architecture.md, *The console*): the hub's own page
for the people who run it, served on the HTTP port.

Someone signs in with an access key of the registry and sees their account only: the hub's
connections, sessions, message rates, drops and store health (Overview); devices found by
product, name and status, each with its session, subscriptions, queue, shadow and recent
deliveries, and disable, enable and disconnect buttons (Devices); products and their topic
categories; retained messages (browse, view, delete); a publish form with the MQTT 5
properties; a live tail of a topic filter; and a message's delivery trace by MessageId.

Modules, one job each:

* ``routes``: the routes, static assets and the one place refusals are rendered;
* ``guard``: session cookie, CSRF token, Origin check, the access key checked again;
* ``sessions``: server-side sessions, bounded in number and lifetime;
* ``signin_limit``: sign-in attempts per client address;
* ``api_session``, ``api_hub``, ``api_devices``, ``api_messages``: the JSON API;
* ``reads``: the registry reads, on the console's own threads;
* ``views``: the JSON of the hub's records;
* ``tail``: the live tail, a bounded broker watch behind a WebSocket;
* ``static/``: the page (HTML, CSS, JavaScript; no framework, no build step).
"""

from .routes import PREFIX, add_routes

__all__ = ["PREFIX", "add_routes"]
