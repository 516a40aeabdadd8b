#!/bin/bash
# Prints each named package that apt has no installation candidate for, one per line.
# Shared by `invoke lab.provision` and the Ansible role; needs a fresh `apt-get update`.
# apt-cache failing is not an answer (an installed package always has a candidate): exit 2.
#   apt-unavailable.sh PACKAGE...
for package in "$@"; do
  if ! policy=$(apt-cache policy "$package" 2>&1) || [[ $policy == *"E: "* ]]; then
    echo "apt-cache policy $package failed: $policy" >&2
    exit 2
  fi
  candidate=$(awk '/Candidate:/ {print $2}' <<<"$policy")
  if [ -z "$candidate" ] || [ "$candidate" = '(none)' ]; then echo "$package"; fi
done
