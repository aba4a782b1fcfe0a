"""Names on a MetricQ network: its exchanges, metric names and broker URLs.

The checks here run before anything reaches the wire: a metric name that cannot be a
routing key, or a broker URL whose password a parser would cut and echo, is refused with a
message that says what was expected (and never shows the password).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence, Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .errors import ConfigError

MANAGEMENT_EXCHANGE = "metricq.management"
BROADCAST_EXCHANGE = "metricq.broadcast"
DATA_EXCHANGE = "metricq.data"
HISTORY_EXCHANGE = "metricq.history"
MAX_ROUTING_KEY_BYTES = 255

BrokerURL = Union[str, Sequence[str]]
"""A broker URL, or the URLs of a cluster's nodes (a list, or one string joined with ``;``)."""


def check_metric_name(metric: str) -> str:
    """Return ``metric`` if it can be a MetricQ metric name (an AMQP routing key).

    Raises:
        TypeError: ``metric`` is not a string.
        ValueError: it is empty or longer than 255 UTF-8 bytes.
    """
    if not isinstance(metric, str):
        raise TypeError(f"metric name must be a str, got {type(metric).__name__}")
    size = len(metric.encode("utf-8"))
    if size == 0 or size > MAX_ROUTING_KEY_BYTES:
        shown = metric if size < 60 else metric[:40] + "..."
        raise ValueError(f"invalid metric name {shown!r}: must be 1 to {MAX_ROUTING_KEY_BYTES} "
                         f"UTF-8 bytes, got {size}")
    return metric


def split_urls(url: str) -> list[str]:
    """The broker URLs in ``url``: one, or several joined with ``;`` (kombu's failover form,
    ``amqp://h1/;amqp://h2/``), each a node a client may connect to."""
    return _NEXT_URL.split(url)


def join_urls(urls: str | Iterable[str]) -> str:
    """One URL string from a URL or a list of them (joined with ``;``).

    Raises:
        TypeError: ``urls`` is neither a string nor an iterable of strings.
        ValueError: the list is empty.
    """
    if isinstance(urls, str):
        return urls
    try:
        parts = list(urls)
    except TypeError:
        raise TypeError(f"url must be a str or a list of str, got {type(urls).__name__}") \
            from None
    if not parts:
        raise ValueError("url: the list of broker URLs is empty; give at least one")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"url: every broker URL must be a str, got {type(part).__name__}")
    return ";".join(parts)


def derive_address(management_url: str, address: str) -> str:
    """Turn a manager's ``dataServerAddress`` into a URL with the management credentials.

    ``vhost:<name>`` keeps the management URL and replaces its virtual host; a URL keeps
    its host and takes user and password (and nothing else) from the management URL.  Both
    may list several nodes (``;``): ``vhost:`` keeps every node of the management URL, and
    each URL of a list gets the credentials of the management URL's first node.
    """
    managements = split_urls(management_url)
    if address.startswith("vhost:"):
        return ";".join(_with_vhost(url, address[len("vhost:"):]) for url in managements)
    return ";".join(_with_credentials(managements[0], target)
                    for target in split_urls(address))


def _with_vhost(management_url: str, vhost: str) -> str:
    management = urlsplit(management_url)
    if not management.netloc:  # an in-process transport (memory://) has one vhost
        return management_url
    path = "/" if vhost in ("", "/") else "/" + quote(vhost, safe="")
    return urlunsplit(management._replace(path=path))


def _with_credentials(management_url: str, address: str) -> str:
    management = urlsplit(management_url)
    target = urlsplit(address)
    if management.username is None:
        return address
    # urlsplit leaves them percent-encoded: encoded again, '%40' would become '%2540'
    credentials = quote(unquote(management.username), safe="")
    if management.password is not None:
        credentials += ":" + quote(unquote(management.password), safe="")
    host = target.netloc.rsplit("@", 1)[-1]
    return urlunsplit(target._replace(netloc=f"{credentials}@{host}"))


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``******`` (for logs and reprs).

    The user information is everything between ``://`` and the last ``@``, and the
    password everything in it after the first ``:``.  That holds whatever the password
    contains, even ``#``, ``/``, ``?`` or ``@`` written unencoded (which a URL parser would
    take for the start of a fragment, path or query and so print).  Several URLs joined
    with ``;`` (kombu's failover form) are masked one by one.
    """
    return ";".join(_redact_one(part) for part in _NEXT_URL.split(url))


_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def check_url(url: str) -> str:
    """Return ``url`` if it is a broker URL kombu reads as written; raise otherwise.

    A password with ``#``, ``/``, ``?`` or ``@`` written unencoded makes a URL parser cut
    the URL in the password and report a piece of it (as a port, a host, a path); such a
    URL is refused here, before anything can echo it, with the masked URL in the message.

    Raises:
        ConfigError: ``url`` is not ``scheme://[user[:password]@]host[:port][/vhost]``.
    """
    for part in _NEXT_URL.split(url):
        scheme, separator, rest = part.partition("://")
        if not separator or not scheme:
            raise ConfigError(f"invalid broker URL {redact_url(part)!r}: expected "
                              "scheme://[user:password@]host[:port]/[vhost], e.g. "
                              "amqp://user:password@localhost/")
        try:
            netloc = urlsplit(part).netloc
            _ = urlsplit(part).port  # raises on a port that is not a number
        except ValueError:
            netloc = None
        if netloc is None or ("@" in rest and "@" not in netloc):
            raise ConfigError(
                f"invalid broker URL {redact_url(part)!r}: its user name or password holds a "
                "character that must be percent-encoded there ('#' as %23, '/' as %2F, "
                "'?' as %3F, '@' as %40, '%' as %25), or its port is not a number")
    return url


def _redact_one(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:******@{rest[at + 1:]}"


def metric_list(metrics: str | Iterable[str]) -> list[str]:
    """``metrics`` as a list of checked metric names; one name may be given as a string."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    return [check_metric_name(name) for name in names]
