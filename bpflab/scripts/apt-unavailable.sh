#!/bin/bash
# Prints each named package that apt has no installation candidate for, one per line.
# Shared by `invoke lab.provision` and the Ansible role; needs a fresh `apt-get update`.
#   apt-unavailable.sh PACKAGE...
for package in "$@"; do
  candidate=$(apt-cache policy "$package" | awk '/Candidate:/ {print $2}')
  if [ -z "$candidate" ] || [ "$candidate" = '(none)' ]; then echo "$package"; fi
done
