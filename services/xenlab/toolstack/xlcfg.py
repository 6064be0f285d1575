"""xl.cfg(5): the domain configuration file, read once into a frozen XlConfig.

The syntax is libxlu's (tools/libs/util/libxlu_cfg_[ly].[ly]), not Python's:

    setting  := IDENT ('=' | '+=') value (NEWLINE | ';' | EOF)
    value    := STRING | NUMBER | '[' [value (',' value)* [',']] ']'

Strings are '...' or "..." on one line with C escapes; numbers are decimal
or 0x hex; lists may nest and may span lines; '#' starts a comment. Every
error carries the line it was found on, as xl reports "FILE:LINE: ...".

Vif entries follow xl-network-configuration(5).
"""
from __future__ import annotations

import difflib
import ipaddress
import re
import uuid as _uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence, Union

from xenlab.xen import abi
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import ConfigError
from xenlab.xen.names import BRIDGE_NAME_RULE, DEFAULT_BRIDGE, IFNAME_RULE, is_bridge_name, is_ifname
from xenlab.xen.netconf import format_mac, parse_mac, parse_rate, parse_vlan
from xenlab.xen.paging import PagingMode

DEFAULT_MEMORY_MB = 128
DEFAULT_MTU = abi.ETH_DATA_LEN
MTU_MAX = 65535
COMMAND_LINE = "<command line>"  # the source named in errors from `xl create ... key=value`

# xl.cfg(5) ACTIONS for on_poweroff, on_reboot, on_crash and on_watchdog,
# and each one's default (libxl_domain_config_setdefault's).
ACTIONS = ("destroy", "restart", "rename-restart", "preserve",
           "coredump-destroy", "coredump-restart", "soft-reset")
ACTION_DEFAULTS = {"poweroff": "destroy", "reboot": "restart", "crash": "destroy",
                   "watchdog": "destroy"}
# Actions xl has that xenlab refuses, and why.
NOT_EMULATED_ACTIONS = {
    "soft-reset": "soft reset (a new kernel booted in the same domain, its memory kept) is not "
                  "emulated; use restart",
}
LAUNCHERS = ("local", "none", "docker")

# Every other xl.cfg(5) key: xenlab keeps it in `extra` (so `xl list -l`
# shows it) and warns, by name, why it does nothing: "disk= is not
# emulated; ignored". The keys xenlab honours are read in _build.
_GUEST_KERNEL = "names a guest kernel to boot; xenlab's guests run its own (python -m xenlab.domain)"
# The kernel command line: the toolstack builds it from these as xl does and
# hands it to the guest in start_info (xen/cmdline.py); the guest reads its
# network settings (ip=, rd.route=, ip_forward) from it.
COMMAND_LINE_KEYS = frozenset({"extra", "cmdline", "root"})
# Scheduling keys: read from extra by the toolstack (toolstack.sched_cfg).
SCHED_KEYS = frozenset({"cpus", "cpu_weight", "cap", "pool"})
_NO_DEVICE = "is not emulated (xenlab's guests have vifs only)"
_NOT_SCHEDULED = "is not emulated (Linux's scheduler has no soft affinity, the lab one NUMA node)"
_HOST_LIMIT = "is not per domain in xenlab: the hypervisor's own limit applies"
_HVM = "is for HVM guests and their device model; xenlab's guests are PV"
_ARM = "is for Arm guests; xenlab's guests are x86 PV"
_NOT_EMULATED = "is not emulated"

IGNORED_XL_KEYS: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys("kernel ramdisk bootloader bootloader_args bootloader_restrict "
                    "bootloader_user pvshim pvshim_path pvshim_cmdline pvshim_extra".split(),
                    _GUEST_KERNEL),
    **dict.fromkeys("disk pci usb usbctrl usbdev vfb vkb vtpm vdispl vsnd channel p9 pvcalls "
                    "virtio rdm rdm_mem_boundary dtdev iomem ioports irqs passthrough vuart tee "
                    "gfx_passthru pci_permissive pci_msitranslate pci_seize pci_power_mgmt "
                    "vkb_device".split(), _NO_DEVICE),
    **dict.fromkeys("cpus_soft vnuma llc_colors".split(), _NOT_SCHEDULED),
    **dict.fromkeys("max_grant_frames max_maptrack_frames max_grant_version max_event_channels "
                    "xenstore_quota".split(), _HOST_LIMIT),
    **dict.fromkeys("firmware bios bios_path_override boot pae acpi acpi_s3 acpi_s4 "
                    "acpi_laptop_slate acpi_firmware apic hpet viridian nestedhvm videoram "
                    "stdvga vga vnc vnclisten vncdisplay vncunused vncpasswd vncviewer sdl "
                    "opengl nographic serial soundhw usbdevice usbversion keymap spice spicehost "
                    "spiceport spicetls_port spicedisable_ticketing spicepasswd "
                    "spiceagent_mouse spicevdagent spice_clipboard_sharing spiceusbredirection "
                    "spice_image_compression spice_streaming_video device_model "
                    "device_model_version device_model_override device_model_stubdomain_override "
                    "device_model_stubdomain_seclabel device_model_args device_model_args_pv "
                    "device_model_args_hvm device_model_user stubdomain_memory stubdomain_kernel "
                    "stubdomain_ramdisk stubdomain_cmdline dm_restrict "
                    "xen_platform_pci xen_platform_pci_bar_uc hdtype timer_mode hvm_pirq "
                    "mmio_hole smbios smbios_firmware ms_vm_genid vendor_device "
                    "xend_suspend_evtchn_compat rombios ovmf altp2m altp2mhvm altp2m_count "
                    "mca_caps vpt_align vmtrace_buf_kb".split(), _HVM),
    **dict.fromkeys("device_tree gic_version nr_spis sve arm_sci ffa".split(), _ARM),
    **dict.fromkeys("on_soft_reset seclabel init_seclabel driver_domain nomigrate tsc_mode "
                    "localtime rtc_timeoffset e820_host claim_mode cpuid vpmu nx "
                    "trap_unmapped_accesses msr_relaxed xenstore_feature_mask "
                    "vif2".split(), _NOT_EMULATED),
})
# The xl.cfg(5) keys xenlab knows, honoured or not: what a typo most likely meant.
KNOWN_XL_KEYS = frozenset(IGNORED_XL_KEYS) | frozenset(
    "name memory maxmem vcpus maxvcpus on_poweroff on_reboot on_crash on_watchdog vif uuid "
    "type builder launcher hap shadow_memory".split()) | SCHED_KEYS
# type= and the older builder= (xl_parse.c: deprecated since Xen 4.10).
DOMAIN_TYPES = ("pv", "pvh", "hvm")
BUILDERS = {"generic": "pv", "linux": "pv", "hvm": "hvm"}
# The paging pool's size in xl.cfg: shadow_memory= is in MiB (xl_parse.c
# keeps it as shadow_memkb = MiB * 1024).
KIB_PER_MIB = 1024

_VIF_IGNORED = ("type", "trusted", "untrusted", "forwarddev", "accel", "gatewaydev")


@dataclass(frozen=True)
class VifConfig:
    devid: int
    mac: str | None = None          # None: a random 00:16:3e address at create time
    bridge: str = DEFAULT_BRIDGE
    ip: str | None = None
    vifname: str | None = None
    rate: str | None = None
    mtu: int = DEFAULT_MTU
    backend: str | None = None      # a domain name or id; None: Domain-0
    script: str | None = None
    model: str | None = None
    vlan: str | None = None         # xl's vlan= text (parse_vlan); the bridge port's VLANs


@dataclass(frozen=True)
class XlConfig:
    name: str
    memory_mb: int = DEFAULT_MEMORY_MB
    maxmem_mb: int = DEFAULT_MEMORY_MB
    vcpus: int = 1
    maxvcpus: int = 1
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    vifs: tuple[VifConfig, ...] = ()
    uuid: str | None = None
    launcher: str | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()
    text: str = ""
    type: str = "pv"                      # pv | pvh | hvm
    hap: bool | None = None               # None: unset (libxl's default for the type)
    shadow_memory_mb: int | None = None   # None: unset (libxl's default)

    @property
    def paging_mode(self) -> PagingMode:
        return paging_mode(self.type, self.hap)

    @property
    def paging_pool_mb(self) -> int:
        """The paging pool the domain gets: shadow_memory= or libxl's default."""
        return paging_pool_mb(self.type, self.hap, self.shadow_memory_mb, self.maxmem_mb,
                              self.maxvcpus)


# --------------------------------------------------------------------------
# Values, as the parser produces them.

@dataclass(frozen=True)
class Atom:
    value: Union[str, int]
    line: int


@dataclass(frozen=True)
class ListValue:
    items: tuple["Value", ...]
    line: int


Value = Union[Atom, ListValue]


@dataclass(frozen=True)
class Setting:
    key: str
    value: Value
    line: int
    append: bool = False     # `key += value`


# --------------------------------------------------------------------------
# Tokenizer.

@dataclass(frozen=True)
class _Token:
    kind: str        # IDENT NUMBER STRING WORD = += [ ] , ; NL EOF
    text: str
    line: int
    value: Union[str, int, None] = None


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|[0-9]+")
# Any other run of characters, stopping before '+=' so that `key+=v` splits.
_WORD = re.compile(r"(?:[^\s\[\],;=#'\"+]|\+(?!=))+")
_NUMERIC_ESCAPE = re.compile(r"x([0-9A-Fa-f]{1,2})|([0-7]{1,3})")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a",
            "b": "\b", "\\": "\\", "'": "'", '"': '"'}


class _Lexer:
    def __init__(self, text: str, path: str | None, first_line: int = 1):
        self.text = text
        self.path = path
        self.pos = 0
        self.line = first_line

    def error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(message, self.line if line is None else line, self.path)

    def tokens(self) -> list[_Token]:
        out = []
        while True:
            tok = self._next()
            out.append(tok)
            if tok.kind == "EOF":
                return out

    def _next(self) -> _Token:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                self.pos += 1
                self.line += 1
                return _Token("NL", "\n", self.line - 1)
            if c in " \t\r\f\v":
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c in "'\"":
                return self._string(c)
            elif text.startswith("+=", self.pos):
                self.pos += 2
                return _Token("+=", "+=", self.line)
            elif c in "=[],;":
                self.pos += 1
                return _Token(c, c, self.line)
            else:
                return self._word()
        return _Token("EOF", "end of file", self.line)

    def _word(self) -> _Token:
        m = _WORD.match(self.text, self.pos)
        word = m.group()
        self.pos = m.end()
        if _NUMBER.fullmatch(word):
            return _Token("NUMBER", word, self.line, int(word, 0))
        if _IDENT.fullmatch(word):
            return _Token("IDENT", word, self.line, word)
        return _Token("WORD", word, self.line, word)

    def _string(self, quote: str) -> _Token:
        start, start_line = self.pos, self.line
        text = self.text
        i = start + 1
        out = []
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error(f"unterminated string (opened with {quote})", start_line)
            c = text[i]
            if c == quote:
                self.pos = i + 1
                return _Token("STRING", text[start:self.pos], start_line, "".join(out))
            if c == "\\":
                i = self._escape(i, out)
                continue
            out.append(c)
            i += 1

    def _escape(self, i: int, out: list[str]) -> int:
        text = self.text
        if i + 1 >= len(text) or text[i + 1] == "\n":
            raise self.error("unterminated string (backslash at end of line)")
        c = text[i + 1]
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
            return i + 2
        m = _NUMERIC_ESCAPE.match(text, i + 1)
        if m is None:
            raise self.error(f"invalid escape \\{c} in string")
        out.append(chr(int(m.group(1), 16) if m.group(1) else int(m.group(2), 8)))
        return m.end()


# --------------------------------------------------------------------------
# Parser.

class _Parser:
    def __init__(self, text: str, path: str | None, first_line: int = 1):
        self.path = path
        self.toks = _Lexer(text, path, first_line).tokens()
        self.i = 0

    def peek(self) -> _Token:
        return self.toks[self.i]

    def take(self) -> _Token:
        tok = self.toks[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def error(self, message: str, line: int) -> ConfigError:
        return ConfigError(message, line, self.path)

    def settings(self) -> list[Setting]:
        out = []
        while True:
            tok = self.take()
            if tok.kind == "EOF":
                return out
            if tok.kind in ("NL", ";"):
                continue
            if tok.kind != "IDENT":
                raise self.error(f"syntax error: expected a setting name, found {_describe(tok)}",
                                 tok.line)
            out.append(self._setting(tok))

    def _setting(self, ident: _Token) -> Setting:
        op = self.take()
        if op.kind not in ("=", "+="):
            raise self.error(f"syntax error: expected '=' after {ident.text!r}, found {_describe(op)}",
                             op.line)
        value = self._value(op)
        end = self.take()
        if end.kind not in ("NL", ";", "EOF"):
            raise self.error(f"syntax error: expected a newline or ';' after the value of "
                             f"{ident.text!r}, found {_describe(end)}", end.line)
        return Setting(ident.text, value, ident.line, op.kind == "+=")

    def _value(self, after: _Token) -> Value:
        tok = self.take()
        if tok.kind in ("STRING", "NUMBER"):
            return Atom(tok.value, tok.line)
        if tok.kind == "[":
            return self._list(tok)
        if tok.kind in ("IDENT", "WORD"):
            raise self.error(f"unknown value type {tok.text!r}: quote strings; numbers are "
                             "decimal or 0x hex integers", tok.line)
        raise self.error(f"syntax error: expected a value after {after.text!r}, found {_describe(tok)}",
                         tok.line)

    def _skip_newlines(self) -> None:
        while self.peek().kind == "NL":
            self.take()

    def _list(self, opening: _Token) -> ListValue:
        items = []
        while True:
            self._skip_newlines()
            tok = self.peek()
            if tok.kind == "]":
                self.take()
                return ListValue(tuple(items), opening.line)
            if tok.kind == "EOF":
                raise self.error(f"unterminated list: '[' on line {opening.line} has no ']'",
                                 tok.line)
            items.append(self._value(opening))
            self._skip_newlines()
            sep = self.take()
            if sep.kind == "]":
                return ListValue(tuple(items), opening.line)
            if sep.kind == "EOF":
                raise self.error(f"unterminated list: '[' on line {opening.line} has no ']'",
                                 sep.line)
            if sep.kind != ",":
                unclosed = (f" (is the '[' on line {opening.line} closed?)"
                            if sep.line != opening.line else "")
                raise self.error(f"bad list: expected ',' or ']' after an item, found "
                                 f"{_describe(sep)}{unclosed}", sep.line)


def _describe(tok: _Token) -> str:
    if tok.kind in ("NL", "EOF"):
        return "end of line" if tok.kind == "NL" else "end of file"
    return repr(tok.text)


def parse_settings(text: str, path: str | None = None, first_line: int = 1) -> list[Setting]:
    """The raw `key = value` settings of an xl.cfg, in file order."""
    return _Parser(text, path, first_line).settings()


def format_value(value: Value) -> str:
    """A value back in xl.cfg syntax (strings unquoted at the top level)."""
    if isinstance(value, Atom) and isinstance(value.value, str):
        return value.value
    return _render(value)


def _render(value: Value) -> str:
    if isinstance(value, ListValue):
        return "[" + ", ".join(_render(v) for v in value.items) + "]"
    if isinstance(value.value, int):
        return str(value.value)
    escaped = value.value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


# --------------------------------------------------------------------------
# From settings to an XlConfig.

class _Settings:
    """The settings of one file plus command-line overrides, last one wins."""

    def __init__(self) -> None:
        self.by_key: dict[str, tuple[Setting, str | None]] = {}
        self.warnings: list[str] = []

    def add(self, setting: Setting, source: str | None, warn_duplicates: bool) -> None:
        previous = self.by_key.get(setting.key)
        if setting.append and previous is not None:
            setting = Setting(setting.key, self._append(previous[0], setting, source),
                              setting.line)
        elif previous is not None and warn_duplicates:
            # xl (libxlu) silently keeps the last one; a typo'd duplicate is
            # worth pointing out.
            self.warnings.append(
                f"{_where(source, setting.line)}warning: duplicate key {setting.key!r} (first set on line "
                f"{previous[0].line}); the last value is used")
        self.by_key[setting.key] = (setting, source)

    def _append(self, old: Setting, new: Setting, source: str | None) -> Value:
        a, b = old.value, new.value
        if isinstance(a, ListValue) and isinstance(b, ListValue):
            return ListValue(a.items + b.items, a.line)
        if isinstance(a, Atom) and isinstance(b, Atom) and isinstance(a.value, str) and isinstance(b.value, str):
            return Atom(a.value + b.value, a.line)
        raise ConfigError(f"'+=' on {new.key!r} needs two strings or two lists", new.line, source)


def _where(source: str | None, line: int) -> str:
    return f"{source}:{line}: " if source else f"{line}: "


class _Reader:
    """Typed access to the settings; errors name the line a key was set on."""

    def __init__(self, settings: _Settings):
        self.by_key = settings.by_key
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.by_key

    def error(self, key: str, message: str) -> ConfigError:
        setting, source = self.by_key[key]
        return ConfigError(message, setting.line, source)

    def _scalar(self, key: str, what: str) -> Atom | None:
        self.used.add(key)
        if key not in self.by_key:
            return None
        value = self.by_key[key][0].value
        if isinstance(value, ListValue):
            raise self.error(key, f"{key!r} must be {what}, not a list")
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        atom = self._scalar(key, "a string")
        # libxlu keeps every atom as text, so `name = 5` reads as "5".
        return default if atom is None else str(atom.value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        atom = self._scalar(key, "a number")
        if atom is None:
            return default
        number = atom.value
        if isinstance(number, str):
            # As xlu_cfg_get_long: a quoted number is a number.
            if not _NUMBER.fullmatch(number.strip()):
                raise self.error(key, f"{key!r} must be a number, not {number!r}")
            number = int(number.strip(), 0)
        if number < minimum:
            raise self.error(key, f"{key!r} must be at least {minimum}, not {number}")
        return number

    def strings(self, key: str) -> list[tuple[str, int, str | None]]:
        """A list of strings, each with the line and file it came from."""
        self.used.add(key)
        if key not in self.by_key:
            return []
        setting, source = self.by_key[key]
        if not isinstance(setting.value, ListValue):
            raise self.error(key, f"{key!r} must be a list, like {key} = ['...']")
        out = []
        for item in setting.value.items:
            if isinstance(item, ListValue):
                raise ConfigError(f"each {key!r} entry must be a string, not a list", item.line, source)
            out.append((str(item.value), item.line, source))
        return out

    def unused(self) -> list[tuple[str, Setting, str | None]]:
        return [(key, setting, source) for key, (setting, source) in self.by_key.items()
                if key not in self.used]


def parse_xl_config(text: str, path: str | None = None, overrides: Sequence[str] = (), *,
                    inline: tuple[str, str | None] | None = None, strict: bool = False) -> XlConfig:
    """Parse an xl.cfg. `overrides` are `key=value` lines given after the
    file on the `xl create` command line; they win over the file.

    `inline` is (text, source): more settings, read after the file and
    before the overrides and winning over the file without a duplicate
    warning, reported under their own source and lines (a lab file's keys
    next to its `config = "FILE.cfg"`). `strict` makes a key that neither
    xenlab nor xl knows an error instead of a warning (a lab file, whose
    warnings nobody might see)."""
    collected = _Settings()
    for setting in parse_settings(text, path):
        collected.add(setting, path, warn_duplicates=True)
    kept = [text]
    if inline is not None:
        inline_text, inline_source = inline
        for setting in parse_settings(inline_text, inline_source):
            collected.add(setting, inline_source, warn_duplicates=False)
        kept.append("\n".join(line for line in inline_text.splitlines() if line.strip()))
    for n, line in enumerate(overrides, 1):
        for setting in parse_settings(line, COMMAND_LINE, first_line=n):
            collected.add(setting, COMMAND_LINE, warn_duplicates=False)
    if overrides:
        # xl appends its command-line settings to the config it keeps.
        kept.append("\n".join(overrides))
    text = "\n".join(part.rstrip("\n") for part in kept if part.strip()) + "\n" if len(kept) > 1 else text
    return _build(_Reader(collected), collected.warnings, path, text, strict)


def _build(r: _Reader, warnings: list[str], path: str | None, text: str,
           strict: bool = False) -> XlConfig:
    name = r.string("name")
    if not name:
        if "name" in r:
            raise r.error("name", "name is empty")
        raise ConfigError('the domain needs a name: add name = "..."', None, path)
    if is_decimal(name):
        raise r.error("name", f"name {name!r} cannot be all digits (it would read as a domain id)")

    memory = r.integer("memory", DEFAULT_MEMORY_MB, minimum=1)
    maxmem = r.integer("maxmem", memory, minimum=1)
    if memory > maxmem:
        raise r.error("maxmem" if "maxmem" in r else "memory",
                      f"memory ({memory} MiB) is larger than maxmem ({maxmem} MiB)")
    vcpus = r.integer("vcpus", 1, minimum=1)
    maxvcpus = r.integer("maxvcpus", vcpus, minimum=1)
    if maxvcpus < vcpus:
        raise r.error("maxvcpus", f"maxvcpus ({maxvcpus}) is smaller than vcpus ({vcpus})")

    actions = {f"on_{reason}": _action(r, f"on_{reason}", default)
               for reason, default in ACTION_DEFAULTS.items()}
    launcher = _choice(r, "launcher", None, LAUNCHERS)
    kind = _domain_type(r)
    hap, shadow_memory = _paging(r, kind, warnings)
    uuid = _uuid_value(r)
    vifs = _vifs(r, warnings)
    extra = _extra(r, warnings, strict)
    return XlConfig(name=name, memory_mb=memory, maxmem_mb=maxmem, vcpus=vcpus, maxvcpus=maxvcpus,
                    vifs=vifs, uuid=uuid, launcher=launcher, extra=MappingProxyType(extra),
                    warnings=tuple(warnings), text=text, type=kind, hap=hap,
                    shadow_memory_mb=shadow_memory, **actions)


def _choice(r: _Reader, key: str, default: str | None, allowed: tuple[str, ...]) -> str | None:
    value = r.string(key, default)
    if value is not None and value not in allowed:
        raise r.error(key, f"{key} = {value!r}: expected one of {', '.join(allowed)}")
    return value


def _domain_type(r: _Reader) -> str:
    """type= (or builder=, its older form), as xl_parse.c reads them: pv
    when neither is given, and the two must agree when both are."""
    kind = _choice(r, "type", None, DOMAIN_TYPES)
    builder = _choice(r, "builder", None, tuple(BUILDERS))
    if builder is not None and kind is not None and BUILDERS[builder] != kind:
        raise r.error("builder", f"builder = {builder!r} contradicts type = {kind!r} "
                                 f"(xl: 'Contradicting \"builder\" and \"type\" options')")
    if kind is None and builder is not None:
        kind = BUILDERS[builder]
    return kind or "pv"


def _paging(r: _Reader, kind: str, warnings: list[str]) -> tuple[bool | None, int | None]:
    """hap= and shadow_memory=. xl reads hap= as a number, any non-zero one
    true (xlu_cfg_get_defbool); libxl acts on both for HVM and PVH guests
    only: a PV guest runs on direct paging and has no paging pool
    (libxl__arch_domain_create sizes it for non-PV types only)."""
    hap = bool(r.integer("hap", 0)) if "hap" in r else None
    shadow_memory = r.integer("shadow_memory", 0) if "shadow_memory" in r else None
    if kind != "pv":
        if shadow_memory is not None and shadow_memory < MIN_PAGING_POOL_MB:
            raise r.error("shadow_memory", pool_too_small(kind, shadow_memory))
        return hap, shadow_memory
    if hap:
        raise r.error("hap", HAP_ON_PV)
    for key, value in (("hap", hap), ("shadow_memory", shadow_memory)):
        if value is not None:
            setting, source = r.by_key[key]
            warnings.append(f"{_where(source, setting.line)}warning: {key}= does nothing for a "
                            "PV guest, which runs on direct paging (xl ignores it for "
                            "type = 'pv'); for shadow paging use type = 'pvh' or 'hvm' with "
                            "hap = 0; ignored")
    return None, None


# Xen's floor on a paging pool: hap_enable and the shadow code start a
# domain with 256 pages (1 MiB).
MIN_PAGING_POOL_MB = 1
# libxl drops hap= for PV without a word, and Xen would refuse
# XEN_DOMCTL_CDF_hap without CDF_hvm ("HAP requested for non-HVM guest"):
# asking for it on a PV guest is a mistake worth stopping.
HAP_ON_PV = ("hap = 1 with type = 'pv': a PV guest has no hardware-assisted paging (Xen "
             "refuses HAP for a non-HVM guest; xl silently ignores hap= for PV); use "
             "type = 'pvh' or 'hvm' for hap, or leave hap= out for PV's direct paging")


def pool_too_small(kind: str, shadow_memory_mb: int) -> str:
    return (f"shadow_memory = {shadow_memory_mb}: a {kind} guest's paging pool needs at least "
            f"{MIN_PAGING_POOL_MB} MiB (Xen's own floor: 256 pages)")


def paging_mode(kind: str, hap: bool | None) -> PagingMode:
    """The paging a domain of this type= and hap= runs on: PV's direct
    paging; for HVM and PVH, HAP unless hap=0 (libxl's default is HAP where
    the host has it, and xenlab's emulated host always does)."""
    if kind == "pv":
        return PagingMode.DIRECT
    return PagingMode.SHADOW if hap is False else PagingMode.HAP


def paging_pool_mb(kind: str, hap: bool | None, shadow_memory_mb: int | None, maxmem_mb: int,
                   maxvcpus: int) -> int:
    """The domain's paging pool in MiB: none for PV; else shadow_memory=, or
    libxl's default (libxl__get_required_paging_memory): 256 pages (1 MiB)
    per vCPU, plus a page per MiB of maxmem for the P2M, plus another per
    MiB to shadow the guest's tables in shadow mode; rounded up to whole
    MiB, as libxl hands Xen its allocation in MiB."""
    mode = paging_mode(kind, hap)
    if mode is PagingMode.DIRECT:
        return 0
    if shadow_memory_mb is not None:
        return shadow_memory_mb
    per_mib = 2 if mode is PagingMode.SHADOW else 1
    kib = 4 * (256 * maxvcpus + per_mib * maxmem_mb)
    return -(-kib // KIB_PER_MIB)


def _action(r: _Reader, key: str, default: str) -> str:
    action = _choice(r, key, default, ACTIONS)
    if action in NOT_EMULATED_ACTIONS:
        raise r.error(key, f"{key} = {action!r}: {NOT_EMULATED_ACTIONS[action]}")
    return action


def _uuid_value(r: _Reader) -> str | None:
    value = r.string("uuid")
    if value is None:
        return None
    try:
        return str(_uuid.UUID(value))
    except ValueError:
        raise r.error("uuid", f"uuid {value!r} is not a UUID") from None


def _vifs(r: _Reader, warnings: list[str]) -> tuple[VifConfig, ...]:
    vifs: list[VifConfig] = []
    seen: dict[int, int] = {}
    for index, (spec, line, source) in enumerate(r.strings("vif")):
        vif_warnings: list[str] = []
        try:
            vif = parse_vif_spec(spec, index, vif_warnings)
        except ConfigError as err:
            raise ConfigError(f"vif {index}: {err.message}", line, source) from None
        warnings.extend(f"{_where(source, line)}warning: vif {index}: {w}" for w in vif_warnings)
        if vif.devid in seen:
            raise ConfigError(f"vif {index}: devid {vif.devid} is already used by vif {seen[vif.devid]}",
                              line, source)
        seen[vif.devid] = index
        vifs.append(vif)
    return tuple(vifs)


def _extra(r: _Reader, warnings: list[str], strict: bool) -> dict[str, str]:
    extra = {}
    # Every key xenlab reads has been asked for by now: those and xl's own
    # are what a typo most likely meant.
    known = sorted(r.used | KNOWN_XL_KEYS)
    for key, setting, source in r.unused():
        extra[key] = format_value(setting.value)
        if key in COMMAND_LINE_KEYS or key in SCHED_KEYS:
            continue            # read from extra by the toolstack (kernel_cmdline, sched_cfg)
        if key in IGNORED_XL_KEYS:
            warnings.append(f"{_where(source, setting.line)}warning: {key}= "
                            f"{IGNORED_XL_KEYS[key]}; ignored")
            continue
        hint = did_you_mean(key, known)
        if strict:
            raise ConfigError(f"unknown key {key!r}{hint}", setting.line, source)
        warnings.append(f"{_where(source, setting.line)}warning: unknown key {key!r} ignored{hint}")
    return extra


def did_you_mean(word: str, known) -> str:
    """" (did you mean 'memory'?)" for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_xl_config(path, overrides: Sequence[str] = (), **options) -> XlConfig:
    """Read and parse an xl.cfg file (``options``: parse_xl_config's).
    OSError propagates unchanged."""
    text = Path(path).read_text()
    return parse_xl_config(text, str(path), overrides, **options)


# --------------------------------------------------------------------------
# Vifs (xl-network-configuration(5)).

def parse_vif_spec(spec: str, devid: int, warnings: list[str] | None = None) -> VifConfig:
    """One vif = [...] entry: comma-separated key=value pairs. An empty
    entry is a vif with every default, as `vif = ['']` is in xl."""
    fields: dict[str, object] = {"devid": devid}
    for token in spec.split(","):
        token = token.strip()
        if not token:
            continue
        key, sep, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError(f"{token!r} is not key=value")
        if key in _VIF_KEYS:
            name, parse = _VIF_KEYS[key]
            fields[name] = parse(value)
        elif key in _VIF_IGNORED:
            if warnings is not None:
                warnings.append(f"{key}={value} is not supported by xenlab; ignored")
        else:
            raise ConfigError(f"unknown vif key {key!r} (known: {', '.join(sorted(_VIF_KEYS))})")
    vif = VifConfig(**fields)
    if warnings is not None:
        warnings.extend(_vif_warnings(vif))
    return vif


def _vif_warnings(vif: VifConfig) -> list[str]:
    """What a vif key xenlab keeps does not do."""
    out = []
    if vif.script is not None and vif.script.rsplit("/", 1)[-1] != "vif-bridge":
        out.append(f"script={vif.script} is not run: xenlab's hotplug does what vif-bridge does "
                   f"(the vif joins bridge={vif.bridge})")
    if vif.model is not None:
        out.append(f"model={vif.model} is an HVM guest's emulated NIC; a PV vif has none; ignored")
    return out


def _vif_mac(text: str) -> str | None:
    mac = parse_mac(text)
    if mac[0] & 0x01:
        raise ConfigError(f"mac={text} is a multicast address; a vif needs a unicast one")
    if mac == bytes(6):
        # libxl__mac_is_default: all zeroes asks for a random address.
        return None
    return format_mac(mac)


def _vif_ip(text: str) -> str:
    addresses = text.split()
    if not addresses:
        raise ConfigError("ip= is empty")
    for address in addresses:
        try:
            ipaddress.IPv4Interface(address)
        except ValueError:
            raise ConfigError(f"ip={address} is not an IPv4 address (A.B.C.D or A.B.C.D/prefix)") from None
    return " ".join(addresses)


def _vif_rate(text: str) -> str:
    parse_rate(text)
    return text


def _vif_mtu(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"mtu={text} is not a number")
    mtu = int(text)
    if not abi.ETH_MIN_MTU <= mtu <= MTU_MAX:
        raise ConfigError(f"mtu={mtu} is out of range {abi.ETH_MIN_MTU}..{MTU_MAX}")
    return mtu


def _vif_devid(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"devid={text} is not a number")
    return int(text)


def _ifname(key: str):
    def check(text: str) -> str:
        if not is_ifname(text):
            raise ConfigError(f"{key}={text!r} is not a valid interface name ({IFNAME_RULE})")
        return text
    return check


def _bridge(key: str):
    def check(text: str) -> str:
        if not is_bridge_name(text):
            raise ConfigError(f"{key}={text!r} is not a valid interface name for a bridge "
                              f"({BRIDGE_NAME_RULE})")
        return text
    return check


def _nonempty(key: str):
    def check(text: str) -> str:
        if not text:
            raise ConfigError(f"{key}= is empty")
        return text
    return check


_VIF_KEYS = {
    "mac": ("mac", _vif_mac),
    "bridge": ("bridge", _bridge("bridge")),
    "netdev": ("bridge", _bridge("netdev")),      # xl's older spelling of bridge
    "ip": ("ip", _vif_ip),
    "vifname": ("vifname", _ifname("vifname")),
    "rate": ("rate", _vif_rate),
    "mtu": ("mtu", _vif_mtu),
    "backend": ("backend", _nonempty("backend")),
    "script": ("script", _nonempty("script")),
    "model": ("model", _nonempty("model")),
    "devid": ("devid", _vif_devid),
    "vlan": ("vlan", lambda text: (parse_vlan(text), text)[1]),
}
