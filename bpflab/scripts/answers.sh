# The doctor's slow answers (importing bcc loads LLVM; bpftrace's version: about a second each
# under emulation), kept in the VM for whoever asks again: an answer stands while nothing it
# depends on is newer (dpkg's status, BCC's stamp from a build, libbcc, bpftrace).
# Put before doctor.sh (bpflab's provisioning and lab.doctor) and the lab runner's facts.
#   remembered NAME VARIABLE   the kept answer into VARIABLE, or status 1
#   remember NAME VALUE        keep it (root)
answers=/var/lib/bpflab/doctor
depends=(/var/lib/dpkg/status /var/lib/bpflab/bcc.json /usr/lib/*/libbcc.so* /usr/lib/libbcc.so*
         /usr/local/lib/libbcc.so* /usr/bin/bpftrace /usr/local/bin/bpftrace)
remembered() {
  local file
  [ -s "$answers/$1" ] || return 1
  for file in "${depends[@]}"; do [ "$file" -nt "$answers/$1" ] && return 1; done
  read -r "$2" < "$answers/$1"
}
remember() {
  [ -n "$2" ] || return 0
  [ -d "$answers" ] || mkdir -p "$answers"
  printf '%s\n' "$2" > "$answers/$1"
}
