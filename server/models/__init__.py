"""The models the server can serve: spec (what a model takes, torch-free), build (name -> model), zoo
(torchvision), synthetic (noop, sleep), user (package.module:factory)."""
