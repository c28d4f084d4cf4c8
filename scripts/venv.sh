# Sourced by scripts/serve and scripts/test: make sure .venv exists, installing Debian's
# python3-venv first when Python cannot make one (a fresh Debian lacks it).
debian_packages=(${test_packages[@]+"${test_packages[@]}"})
[ -x .venv/bin/python ] || python3 -c 'import ensurepip, venv' 2>/dev/null || debian_packages+=(python3-venv)
if [ ${#debian_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "wodmail: please install ${debian_packages[*]} (apt-get install ${debian_packages[*]}), or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${debian_packages[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
