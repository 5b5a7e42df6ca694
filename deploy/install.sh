#!/usr/bin/env bash
# Install wazuh-misp-ioc on a Wazuh 4.x manager, or remove it again.
#
#   deploy/install.sh [--root DIR] [--python PY] [--no-venv]
#   deploy/install.sh --uninstall [--purge] [--root DIR]
#
# Running it again is safe: files that are already right stay untouched, the
# user's config.yaml and /etc/default/misp-ioc-sync are never overwritten, and
# the <localfile> block appears in ossec.conf exactly once.
#
# --root DIR  stages everything under DIR (every absolute path is prefixed);
#             chown and systemctl are then skipped and printed as "skip: ...".
#             They are also skipped when not running as root.
#             DIR must hold what a manager has: DIR/var/ossec/etc/rules/
#             and DIR/var/ossec/etc/ossec.conf.
# --no-venv   does not create the virtual environment (for staging and tests).
# --python PY the interpreter for the virtual environment (default python3).
# --uninstall removes what the installer added: units, rules, logrotate file,
#             the marked ossec.conf block and the virtual environment, and puts
#             back the files of an earlier installation that the units
#             replaced. The IOC store, config.yaml, the environment file and
#             the checkpoint stay.
# --purge     with --uninstall, removes those as well.
set -euo pipefail

readonly PROG=${0##*/}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR
readonly DEPLOY_DIR=$REPO_DIR/deploy

readonly OPT_DIR=/opt/wazuh-misp-ioc
readonly VENV_DIR=$OPT_DIR/venv
# In a root-owned directory: the state directory is writable by wazuh, and a
# manifest there would let that user choose what root deletes on uninstall.
readonly MANIFEST=$OPT_DIR/install-manifest
# Files of another installation that ours replace (the env-file deployment's
# units have the same names); --uninstall puts them back.
readonly SAVED_DIR=$OPT_DIR/replaced
readonly ETC_DIR=/etc/wazuh-misp-ioc
readonly ENV_FILE=/etc/default/misp-ioc-sync
readonly IOC_DIR=/var/ioc
readonly STATE_DIR=/var/lib/wazuh-misp-ioc
readonly UNIT_DIR=/etc/systemd/system
readonly LOGROTATE_FILE=/etc/logrotate.d/wazuh-misp-ioc
readonly OSSEC_DIR=/var/ossec
readonly RULES_DIR=$OSSEC_DIR/etc/rules
readonly OSSEC_CONF=$OSSEC_DIR/etc/ossec.conf
readonly UNITS=(wazuh-ioc-tailer.service misp-ioc-sync.service misp-ioc-sync.timer)
readonly IOC_DBS=(ips hashes domains urls)
readonly BEGIN_MARK='<!-- wazuh-misp-ioc begin -->'
readonly END_MARK='<!-- wazuh-misp-ioc end -->'

ROOT=""
PYTHON=python3
MAKE_VENV=1
ACTION=install
PURGE=0
LIVE=0
MANIFEST_LINES=()

die() {
    echo "$PROG: $*" >&2
    exit 2
}

note() {
    echo "$PROG: $*"
}

usage() {
    sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

parse_args() {
    while (($#)); do
        case $1 in
        --root)
            [[ $# -ge 2 && -n $2 ]] || die "--root: missing directory; expected --root DIR"
            ROOT=$(cd "$2" 2>/dev/null && pwd) || die "--root: no such directory (got $2)"
            shift
            ;;
        --python)
            [[ $# -ge 2 && -n $2 ]] || die "--python: missing interpreter; expected --python PY"
            PYTHON=$2
            shift
            ;;
        --no-venv) MAKE_VENV=0 ;;
        --uninstall) ACTION=uninstall ;;
        --purge) PURGE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument (got $1); expected one of --root --python --no-venv --uninstall --purge" ;;
        esac
        shift
    done
    if ((PURGE)) && [[ $ACTION != uninstall ]]; then
        die "--purge: only with --uninstall"
    fi
    if [[ -z $ROOT && $(id -u) -eq 0 ]]; then
        LIVE=1
    fi
}

# The path as seen by this script: under --root when staging.
at() {
    printf '%s%s' "$ROOT" "$1"
}

# Ownership and systemctl need a real root on the real system.
set_owner() {
    if ((LIVE)); then
        chown "$1" "$(at "$2")"
    else
        echo "skip: chown $1 $2"
    fi
}

run_systemctl() {
    if ((LIVE)) && [[ -d /run/systemd/system ]]; then
        systemctl "$@" || note "systemctl $* failed; continuing"
    else
        echo "skip: systemctl $*"
    fi
}

make_dir() {
    local dir=$1 mode=$2 owner=$3
    mkdir -p "$(at "$dir")"
    chmod "$mode" "$(at "$dir")"
    set_owner "$owner" "$dir"
}

in_manifest() {
    [[ -f $(at "$MANIFEST") ]] && grep -qxF -- "$1" "$(at "$MANIFEST")"
}

save_replaced() {
    local dst=$1 saved
    saved=$(at "$SAVED_DIR$dst")
    if [[ ! -e $(at "$dst") || -e $saved ]] || in_manifest "$dst"; then
        return 0
    fi
    mkdir -p "${saved%/*}"
    cp -p "$(at "$dst")" "$saved"
    note "saved $dst of another installation as $SAVED_DIR$dst"
}

# Copy when the target differs, so a second run changes nothing.
put_file() {
    local src=$1 dst=$2 mode=$3 owner=$4
    if ! cmp -s "$src" "$(at "$dst")"; then
        save_replaced "$dst"
        install -m "$mode" "$src" "$(at "$dst")"
    fi
    chmod "$mode" "$(at "$dst")"
    set_owner "$owner" "$dst"
    MANIFEST_LINES+=("$dst")
}

# A file the user edits afterwards: written once, never overwritten.
put_user_file() {
    local src=$1 dst=$2 mode=$3 owner=$4
    if [[ -e $(at "$dst") ]]; then
        note "kept existing $dst"
        return
    fi
    install -m "$mode" "$src" "$(at "$dst")"
    set_owner "$owner" "$dst"
}

# The environment file holds the API key; an old one may be world-readable.
check_env_mode() {
    local mode
    mode=$(stat -c %a "$(at "$ENV_FILE")")
    if ((8#$mode & 8#007)); then
        note "$ENV_FILE is readable by every user (mode $mode) and may hold the API key; expected: chown root:wazuh, chmod 0640"
    fi
}

rules_sources() {
    local found=()
    shopt -s nullglob
    found=("$REPO_DIR"/rules/*rules*.xml)
    shopt -u nullglob
    ((${#found[@]})) || die "rules: no *rules*.xml in $REPO_DIR/rules; expected the rules file of this package"
    printf '%s\n' "${found[@]}"
}

make_venv() {
    if ((!MAKE_VENV)); then
        echo "skip: venv $VENV_DIR (--no-venv)"
        return
    fi
    if [[ ! -x $(at "$VENV_DIR/bin/python") ]]; then
        "$PYTHON" -m venv "$(at "$VENV_DIR")"
    fi
    "$(at "$VENV_DIR/bin/python")" -m pip install --quiet --upgrade "$REPO_DIR"
    MANIFEST_LINES+=("$VENV_DIR/")
}

install_dirs() {
    make_dir "$OPT_DIR" 0755 root:root
    make_dir "$ETC_DIR" 0750 root:wazuh
    # The sync writes the store as its owner; the tailer, also wazuh, opens
    # the databases read-only.
    make_dir "$IOC_DIR" 0750 wazuh:wazuh
    make_dir "$STATE_DIR" 0750 wazuh:wazuh
    mkdir -p "$(at "$UNIT_DIR")" "$(at "${LOGROTATE_FILE%/*}")" "$(at "${ENV_FILE%/*}")"
}

install_files() {
    local unit src
    put_user_file "$DEPLOY_DIR/config.example.yaml" "$ETC_DIR/config.yaml" 0640 root:wazuh
    put_user_file "$DEPLOY_DIR/misp-ioc-sync.env" "$ENV_FILE" 0640 root:wazuh
    check_env_mode
    for unit in "${UNITS[@]}"; do
        put_file "$DEPLOY_DIR/systemd/$unit" "$UNIT_DIR/$unit" 0644 root:root
    done
    put_file "$DEPLOY_DIR/logrotate/wazuh-misp-ioc" "$LOGROTATE_FILE" 0644 root:root
    while IFS= read -r src; do
        put_file "$src" "$RULES_DIR/${src##*/}" 0660 root:wazuh
    done < <(rules_sources)
}

# ossec.conf is only ever replaced by a copy with the marked block rewritten;
# the original is kept beside it before the first change.
without_block() {
    # awk 1 ends the last line with a newline, so the block starts a line.
    sed -e "\\|^$BEGIN_MARK\$|,\\|^$END_MARK\$|d" "$1" | awk 1
}

# The snippet without its XML declaration and one-line comments, which are
# addressed to a reader of the snippet, not of ossec.conf.
snippet_body() {
    grep -v -e '^<?xml' -e '^[[:space:]]*<!--.*-->[[:space:]]*$' "$1"
}

localfile_block() {
    local snippet=$REPO_DIR/rules/localfile.xml
    echo "$BEGIN_MARK"
    # Wazuh reads every <ossec_config> element of the file; its own default
    # ossec.conf already has more than one.
    if grep -q '^[[:space:]]*<ossec_config>' "$snippet"; then
        snippet_body "$snippet"
    else
        echo '<ossec_config>'
        snippet_body "$snippet" | sed 's/^/  /'
        echo '</ossec_config>'
    fi
    echo "$END_MARK"
}

backup_path() {
    local base
    base="$(at "$OSSEC_CONF").$1-$(date +%Y%m%d%H%M%S)"
    local path=$base n=1
    while [[ -e $path ]]; do
        path=$base.$n
        n=$((n + 1))
    done
    printf '%s' "$path"
}

replace_ossec_conf() {
    local new=$1 why=$2 conf backup
    conf=$(at "$OSSEC_CONF")
    if cmp -s "$new" "$conf"; then
        rm -f "$new"
        return
    fi
    backup=$(backup_path "$why")
    cp -p "$conf" "$backup"
    note "saved $OSSEC_CONF as ${backup#"$ROOT"}"
    chmod --reference="$conf" "$new"
    if ((LIVE)); then
        chown --reference="$conf" "$new"
    fi
    mv -f "$new" "$conf"
}

add_localfile_block() {
    local conf new
    conf=$(at "$OSSEC_CONF")
    new=$(mktemp "$conf.wazuh-misp-ioc.XXXXXX")
    {
        without_block "$conf"
        localfile_block
    } >"$new"
    replace_ossec_conf "$new" pre-wazuh-misp-ioc
}

remove_localfile_block() {
    local conf new
    conf=$(at "$OSSEC_CONF")
    [[ -f $conf ]] || return 0
    new=$(mktemp "$conf.wazuh-misp-ioc.XXXXXX")
    without_block "$conf" >"$new"
    replace_ossec_conf "$new" pre-uninstall-wazuh-misp-ioc
}

save_manifest() {
    local tmp
    tmp=$(mktemp "$(at "$MANIFEST").XXXXXX")
    printf '%s\n' "${MANIFEST_LINES[@]}" | sort -u >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$(at "$MANIFEST")"
}

print_migration_notes() {
    local conf
    conf=$(at "$OSSEC_CONF")
    if grep -q 'custom-misp' "$conf"; then
        note "ossec.conf names the old integratord hook (custom-misp.py) at:"
        grep -n 'custom-misp' "$conf" | sed 's/^/    line /'
        note "if that <integration> block is active, disable it: the tailer replaces it"
    fi
    local others
    others=$(grep -l 'id="101080"' "$(at "$RULES_DIR")"/*.xml 2>/dev/null | grep -v -F -x -f <(installed_rules) || true)
    if [[ -n $others ]]; then
        note "rule 101080 is also defined in: ${others//"$ROOT"/}"
        note "remove that definition: Wazuh keeps only the first rule of an id"
    fi
}

installed_rules() {
    local src
    while IFS= read -r src; do
        at "$RULES_DIR/${src##*/}"
        echo
    done < <(rules_sources)
}

print_next_steps() {
    local bin=$VENV_DIR/bin conf=$ETC_DIR/config.yaml
    cat <<EOF

Next steps (systemctl daemon-reload was run above, unless printed as skip:):
  1. Set MISP_URL and MISP_API_KEY in $ENV_FILE (or the key in a file, see
     the README); review $conf.
  2. Check the configuration as the services will see it:
     systemd-run --pipe --wait -p User=wazuh -p EnvironmentFile=$ENV_FILE \\
       $bin/misp-ioc-sync --config $conf --check-config
  3. Run the first sync and read its result:
     systemctl start misp-ioc-sync.service; journalctl -u misp-ioc-sync -n 20
  4. systemctl enable --now misp-ioc-sync.timer wazuh-ioc-tailer.service
  5. systemctl restart wazuh-manager   (loads the rules and the <localfile> block)
EOF
}

# What a staged root must hold, as a manager does, named in the error.
manager_hint() {
    if [[ -n $ROOT ]]; then
        printf '%s' "; with --root, create $ROOT$RULES_DIR and $ROOT$OSSEC_CONF first"
    fi
}

# Everything the install needs is checked before anything is changed.
check_sources() {
    rules_sources >/dev/null
    [[ -f $REPO_DIR/rules/localfile.xml ]] || die "rules: $REPO_DIR/rules/localfile.xml missing; expected the <localfile> block of this package"
    [[ -d $(at "$RULES_DIR") ]] || die "rules: $(at "$RULES_DIR") missing; expected a Wazuh manager installation$(manager_hint)"
    [[ -f $(at "$OSSEC_CONF") ]] || die "ossec.conf: $(at "$OSSEC_CONF") missing; expected a Wazuh manager installation$(manager_hint)"
    if ((LIVE)) && ! id wazuh >/dev/null 2>&1; then
        die "user wazuh: missing; expected a Wazuh manager installation"
    fi
}

do_install() {
    check_sources
    install_dirs
    make_venv
    install_files
    add_localfile_block
    save_manifest
    set_owner root:root "$MANIFEST"
    run_systemctl daemon-reload
    print_migration_notes
    print_next_steps
}

# Only paths this installer can have written are honoured from the manifest.
manifest_entries() {
    local manifest line
    manifest=$(at "$MANIFEST")
    [[ -f $manifest ]] || return 0
    while IFS= read -r line; do
        case $line in
        "$VENV_DIR/" | "$LOGROTATE_FILE") echo "$line" ;;
        "$UNIT_DIR"/wazuh-ioc-tailer.service | "$UNIT_DIR"/misp-ioc-sync.*) echo "$line" ;;
        "$RULES_DIR"/*.xml) [[ $line == */*..* ]] || echo "$line" ;;
        *) note "manifest: ignored unexpected entry (got $line)" >&2 ;;
        esac
    done <"$manifest"
}

# Without a manifest, the rules files of this checkout are ours.
repo_rules_entries() {
    local src
    for src in "$REPO_DIR"/rules/*rules*.xml; do
        [[ -f $src ]] && echo "$RULES_DIR/${src##*/}"
    done
    return 0
}

remove_entry() {
    local path
    path=$(at "$1")
    if [[ $1 == */ ]]; then
        rm -rf "$path"
    else
        rm -f "$path"
    fi
}

restore_replaced() {
    local saved file
    saved=$(at "$SAVED_DIR")
    [[ -d $saved ]] || return 0
    while IFS= read -r -d '' file; do
        mv -f "$file" "$(at "${file#"$saved"}")"
        note "restored ${file#"$saved"}"
    done < <(find "$saved" -type f -print0)
    rm -rf "$saved"
}

purge_user_data() {
    local db
    for db in "${IOC_DBS[@]}"; do
        rm -f "$(at "$IOC_DIR/$db.db")" "$(at "$IOC_DIR/$db.db-wal")" "$(at "$IOC_DIR/$db.db-shm")"
    done
    # The sync's lock and the outcome of its last run live beside the databases.
    rm -f "$(at "$IOC_DIR/.sync.lock")" "$(at "$IOC_DIR/.last-attempt.json")"
    rmdir "$(at "$IOC_DIR")" 2>/dev/null || note "kept $IOC_DIR: it holds files this package did not create"
    rm -rf "$(at "$ETC_DIR")" "$(at "$STATE_DIR")"
    rm -f "$(at "$ENV_FILE")"
}

do_uninstall() {
    local entry
    run_systemctl disable --now wazuh-ioc-tailer.service misp-ioc-sync.timer
    run_systemctl stop misp-ioc-sync.service
    {
        manifest_entries
        repo_rules_entries
        printf '%s\n' "${UNITS[@]/#/$UNIT_DIR/}" "$LOGROTATE_FILE" "$VENV_DIR/"
    } | sort -u | while IFS= read -r entry; do
        remove_entry "$entry"
    done
    restore_replaced
    remove_localfile_block
    rm -f "$(at "$MANIFEST")"
    rmdir "$(at "$OPT_DIR")" 2>/dev/null || true
    if ((PURGE)); then
        purge_user_data
    else
        note "kept $ETC_DIR, $ENV_FILE, $IOC_DIR and $STATE_DIR (--purge removes them)"
    fi
    run_systemctl daemon-reload
    note "restart wazuh-manager to unload the rules and the <localfile> block"
}

main() {
    parse_args "$@"
    umask 022
    if [[ $ACTION == install ]]; then
        do_install
    else
        do_uninstall
    fi
}

main "$@"
