"""The learner service: one HTTP API between robots, learner jobs and the learner's data.

Robots upload finished episodes and learn about new policy versions; learner jobs publish
versions, mark the one to deploy and report run status. The service is the single writer of the
learner's episode store and policy registry. docs/learner_service.md is the full contract.

Submodules `models` (wire types), `archive` (upload format) and `token` depend only on pydantic
and the standard library, so robot-side clients import them without pulling in the server.
"""
