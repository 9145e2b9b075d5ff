"""Django settings for the local Label Studio that ``LabelStudioServer`` starts.

Label Studio's own settings with one change: its RQ queues point at a closed port, so it runs
jobs (webhooks above all) synchronously inside the request. Label Studio 1.23 connects to
``localhost:6379`` db 0 whenever a Redis answers there and then only *enqueues* webhooks for
RQ workers it does not start; on a machine that runs Redis for other reasons (slicerank's
training queue) webhooks would silently never leave.
"""

# Base first: importing label_studio.py reads django.conf.settings (Sentry set-up) while this
# module is still half-imported, so the names it reads must already be here.
from label_studio.core.settings.base import *  # noqa: F403, I001
from label_studio.core.settings.label_studio import *  # noqa: F403

_NO_REDIS = {"HOST": "127.0.0.1", "PORT": 1, "DB": 0, "DEFAULT_TIMEOUT": 180}
RQ_QUEUES = {name: dict(_NO_REDIS) for name in ("critical", "high", "default", "low")}
