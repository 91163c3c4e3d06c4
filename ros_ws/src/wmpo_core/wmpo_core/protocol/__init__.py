"""The learner service's wire protocol, shared by the service and its robot-side client.

`models` (request and response types), `archive` (the upload format) and `token` (where the
shared secret comes from) depend only on pydantic, the standard library and `wmpo_core`, so the
robot side (`wmpo_ros.learner_client`) speaks the protocol without importing the learner.
"""
