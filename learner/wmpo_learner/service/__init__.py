"""The learner service: one HTTP API between robots, learner jobs and the learner's data.

Robots upload finished episodes and learn about new policy versions; learner jobs publish
versions, mark the one to deploy and report run status. The service is the single writer of the
learner's episode store and policy registry. docs/learner_service.md is the full contract.

The wire protocol (API models, upload archive format, token loading) lives in the shared core,
`wmpo_core.protocol`, so robot-side clients speak it without importing the learner.
"""
