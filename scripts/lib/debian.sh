# Sourced by the scripts in scripts/: installs what they need from Debian's
# packages, as root or via sudo.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PACKAGE...: installs the packages (nothing when none are
# given). `nginx` is installed as nginx-light where Debian has it (12: the
# smallest build with the proxy module; later releases ship it as plain
# `nginx`), which is only known once the package lists are fresh.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    local packages=("$@")
    if [[ " ${packages[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
        packages=("${packages[@]/#nginx/nginx-light}")
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
}
