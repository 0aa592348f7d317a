#!/usr/bin/env bash
# Install the edgefleet agent as a systemd service on Raspberry Pi OS (64-bit) or any Debian-like Linux.
# Safe to run again: it upgrades the package, keeps an existing /etc/edgefleet/agent.yaml, and restarts.
set -euo pipefail

PREFIX=/opt/edgefleet
CONFIG_DIR=/etc/edgefleet
SERVICE_USER=edgefleet
UNIT_NAME=edgefleet-agent.service
UNIT_DIR=/etc/systemd/system
PACKAGE=edgefleet
EXTRAS=agent,tflite
BROKER=""
DEVICE_ID=""
PROFILE=""
TRUST=""
FLEET_GROUPS=()
TLS_CA=""
TLS_CERT=""
TLS_KEY=""
PASSWORD_FILE=""
START=1
DRY_RUN=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'USAGE'
Usage: sudo deploy/pi/install.sh [OPTIONS]

Install the edgefleet device agent into a virtual environment in /opt/edgefleet, create the
`edgefleet` system user, write /etc/edgefleet/agent.yaml (only if it does not exist yet), and
install, enable and (re)start edgefleet-agent.service. Running it again upgrades in place.

Options:
  --broker URL        MQTT broker, e.g. mqtts://device:secret@fleet.example:8883 (config file)
  --trust FILE.pub    public signing key whose packages this device accepts; copied to
                      /etc/edgefleet/trusted-keys/ (required unless keys are already there)
  --device-id ID      this device's id in the fleet (default: the hostname)
  --profile NAME      hardware profile (default: detected, e.g. raspberry-pi-5)
  --group NAME        fleet group (repeatable)
  --tls-ca FILE       CA certificate that signed the broker's (edgefleet certs init: ca.crt)
  --tls-cert FILE     this device's client certificate (edgefleet certs device ID)
  --tls-key FILE      its private key; the three are copied to /etc/edgefleet/tls/
  --password-file F   file whose first line is the MQTT password; copied to /etc/edgefleet/tls/
  --extras LIST       pip extras to install (default: agent,tflite; e.g. agent,onnx)
  --package SPEC      what pip installs (default: edgefleet; or a wheel file or a git URL)
  --prefix DIR        install root (default: /opt/edgefleet)
  --no-start          install and enable the service, but do not (re)start it now
  --dry-run           print what would be done, change nothing (no root needed)
  -h, --help          show this help

Example:
  sudo deploy/pi/install.sh --broker mqtt://fleet.local:1883 --trust signing.pub --group greenhouse
USAGE
}

die() { echo "install.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --broker) BROKER="${2:?--broker needs a URL}"; shift 2 ;;
        --trust) TRUST="${2:?--trust needs a key file}"; shift 2 ;;
        --device-id) DEVICE_ID="${2:?--device-id needs an id}"; shift 2 ;;
        --profile) PROFILE="${2:?--profile needs a name}"; shift 2 ;;
        --group) FLEET_GROUPS+=("${2:?--group needs a name}"); shift 2 ;;
        --tls-ca) TLS_CA="${2:?--tls-ca needs a file}"; shift 2 ;;
        --tls-cert) TLS_CERT="${2:?--tls-cert needs a file}"; shift 2 ;;
        --tls-key) TLS_KEY="${2:?--tls-key needs a file}"; shift 2 ;;
        --password-file) PASSWORD_FILE="${2:?--password-file needs a file}"; shift 2 ;;
        --extras) EXTRAS="${2:?--extras needs a list}"; shift 2 ;;
        --package) PACKAGE="${2:?--package needs a pip requirement}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

VENV="$PREFIX/venv"
CONFIG="$CONFIG_DIR/agent.yaml"
KEYS="$CONFIG_DIR/trusted-keys"
TLS_DIR="$CONFIG_DIR/tls"

# Run a command, or print it in --dry-run mode.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# Write stdin to a file (mode $2), or print it in --dry-run mode.
write_file() {
    local path="$1" mode="$2" content
    content="$(cat)"
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ write %s (mode %s):\n%s\n' "$path" "$mode" "$content"
    else
        printf '%s\n' "$content" > "$path.tmp"
        chmod "$mode" "$path.tmp"
        mv "$path.tmp" "$path"
    fi
}

yaml_quote() { printf "'%s'" "${1//\'/\'\'}"; }

[[ $DRY_RUN -eq 1 || $EUID -eq 0 ]] || die "run as root (sudo), or with --dry-run to see what it would do"
[[ -f "$HERE/$UNIT_NAME" ]] || die "$HERE/$UNIT_NAME is missing: run this script from an edgefleet checkout"
[[ -z "$TRUST" || -f "$TRUST" ]] || die "--trust $TRUST: no such file"
for f in "$TLS_CA" "$TLS_CERT" "$TLS_KEY" "$PASSWORD_FILE"; do
    [[ -z "$f" || -f "$f" ]] || die "$f: no such file"
done
if [[ -z "$TRUST" && $DRY_RUN -eq 0 ]] && ! compgen -G "$KEYS/*.pub" > /dev/null; then
    die "no trusted key in $KEYS: pass --trust FILE.pub (the agent refuses every package otherwise)"
fi

echo "==> system packages"
if ! python3 -c 'import venv, ensurepip' 2> /dev/null; then
    run apt-get update
    run apt-get install -y python3-venv
fi

echo "==> user $SERVICE_USER"
if ! id -u "$SERVICE_USER" > /dev/null 2>&1; then
    run useradd --system --user-group --home-dir /var/lib/edgefleet --no-create-home \
        --shell /usr/sbin/nologin --comment "edgefleet agent" "$SERVICE_USER"
fi
for group in video i2c gpio; do  # vcgencmd, I2C power sensors; absent groups are skipped
    if getent group "$group" > /dev/null; then
        run usermod --append --groups "$group" "$SERVICE_USER"
    fi
done

echo "==> $PACKAGE[$EXTRAS] in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    run mkdir -p "$PREFIX"
    run python3 -m venv "$VENV"
fi
run "$VENV/bin/pip" install --quiet --upgrade pip
run "$VENV/bin/pip" install --quiet --upgrade "$PACKAGE[$EXTRAS]"

echo "==> configuration in $CONFIG_DIR"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR" "$KEYS"
if [[ -n "$TRUST" ]]; then
    run install -m 0644 -o root -g root "$TRUST" "$KEYS/$(basename "$TRUST")"
fi
# Certificates and secrets: readable by root and the agent's group only (keys and passwords 0640).
TLS_KEYS=()
if [[ -n "$TLS_CA$TLS_CERT$TLS_KEY$PASSWORD_FILE" ]]; then
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$TLS_DIR"
fi
for entry in "tls_ca|$TLS_CA|0644|ca.crt" "tls_cert|$TLS_CERT|0644|client.crt" "tls_key|$TLS_KEY|0640|client.key" \
             "password_file|$PASSWORD_FILE|0640|mqtt-password"; do
    IFS='|' read -r key file mode name <<< "$entry"
    [[ -n "$file" ]] || continue
    run install -m "$mode" -o root -g "$SERVICE_USER" "$file" "$TLS_DIR/$name"
    TLS_KEYS+=("$key: $TLS_DIR/$name")
done
if [[ -f "$CONFIG" ]]; then
    echo "keeping the existing $CONFIG"
    [[ ${#TLS_KEYS[@]} -eq 0 ]] || echo "(add to it: ${TLS_KEYS[*]})"
else
    {
        echo "# edgefleet agent settings: keys are the \`edgefleet agent\` options (see docs/agent.md)."
        echo "# Precedence: command-line flag > EDGEFLEET_* environment variable > this file > default."
        [[ -n "$BROKER" ]] && echo "broker: $(yaml_quote "$BROKER")"
        [[ -n "$DEVICE_ID" ]] && echo "device_id: $(yaml_quote "$DEVICE_ID")"
        [[ -n "$PROFILE" ]] && echo "profile: $(yaml_quote "$PROFILE")"
        echo "data_dir: /var/lib/edgefleet"
        echo "trust: [$KEYS]"
        if [[ ${#FLEET_GROUPS[@]} -gt 0 ]]; then
            echo "groups:"
            for group in "${FLEET_GROUPS[@]}"; do echo "  - $(yaml_quote "$group")"; done
        fi
        if [[ ${#TLS_KEYS[@]} -gt 0 ]]; then
            for line in "${TLS_KEYS[@]}"; do echo "$line"; done
        fi
    } | write_file "$CONFIG" 0640
    run chgrp "$SERVICE_USER" "$CONFIG"  # the broker URL may hold a password: not world-readable
fi

# The agent validates its config file before --help (both are eager, --config comes first): a bad key stops here.
run "$VENV/bin/edgefleet" agent --config "$CONFIG" --help > /dev/null

echo "==> $UNIT_DIR/$UNIT_NAME"
sed "s#/opt/edgefleet/venv#$VENV#g" "$HERE/$UNIT_NAME" | write_file "$UNIT_DIR/$UNIT_NAME" 0644
run systemctl daemon-reload
run systemctl enable "$UNIT_NAME"
if [[ $START -eq 1 ]]; then
    run systemctl restart "$UNIT_NAME"
    echo "started: follow it with  journalctl -u $UNIT_NAME -f"
else
    echo "enabled, not started: start it with  systemctl start $UNIT_NAME"
fi
