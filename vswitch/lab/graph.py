"""A picture of a lab: switches, nodes, links and addresses, laid out by graphviz.

Switches are blue boxes, VMs rounded boxes, namespace hosts grey folders; each link is
labelled with the node's interface at the node's end and the switch port at the switch's
end; trunks between switches are bold.  Needs the `dot` program (Debian: graphviz) and
the graphviz Python package.
"""

from __future__ import annotations

from typing import Any

from vswitch.errors import VswitchError
from vswitch.lab.topology import LabSpec
from vswitch.mac import format_mac

FORMATS = ("svg", "png", "pdf", "dot")


class GraphError(VswitchError):
    pass


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build(spec: LabSpec) -> Any:
    """The graphviz.Graph of the lab (not rendered)."""
    try:
        import graphviz
    except ImportError:
        raise GraphError(
            "the graphviz Python package is missing (pip install graphviz, or run scripts/setup)"
        ) from None
    g = graphviz.Graph(name=spec.name, engine="dot")
    g.attr(
        label=f"lab {spec.name}",
        labelloc="t",
        fontname="Helvetica",
        fontsize="16",
        overlap="false",
        splines="true",
        nodesep="0.6",
        ranksep="1.1",
    )
    g.attr("node", fontname="Helvetica", fontsize="11")
    g.attr("edge", fontname="Helvetica", fontsize="9", color="#555555")
    for sw in spec.switches.values():
        g.node(
            f"switch {sw.name}",
            label=f"<<b>{_html(sw.name)}</b><br/><font point-size='9'>vswitch, "
            f"{len(sw.ports)} port(s)</font>>",
            shape="box",
            style="filled,bold",
            fillcolor="#cfe2ff",
            color="#1f4e99",
        )
    for n in spec.nodes.values():
        rows = [f"<b>{_html(n.name)}</b>"]
        kind = (
            f"VM, {n.memory} MiB" if n.type == "vm" else f"host (netns {spec.node_netns(n.name)})"
        )
        rows.append(f"<font point-size='9'>{_html(kind)}</font>")
        for i in n.ifaces:
            addrs = ", ".join(i.addresses) or "no address"
            rows.append(
                f"<font point-size='9'>{_html(i.name)} {format_mac(i.mac)}<br/>"
                f"{_html(addrs)}</font>"
            )
        for to, via in n.routes:
            rows.append(f"<font point-size='8' color='#666666'>{_html(to)} via {_html(via)}</font>")
        style = (
            {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f5e9", "color": "#2e7d32"}
            if n.type == "vm"
            else {"shape": "folder", "style": "filled", "fillcolor": "#eeeeee", "color": "#555555"}
        )
        g.node(f"node {n.name}", label="<" + "<br/>".join(rows) + ">", **style)
    for n in spec.nodes.values():
        for i in n.ifaces:
            g.edge(
                f"node {n.name}",
                f"switch {i.switch}",
                taillabel=i.name,
                headlabel=i.port,
                labeldistance="2.2",
                tooltip=f"{n.name}:{i.name} - {i.switch}:{i.port}",
            )
    for t in spec.trunks:
        g.edge(
            f"switch {t.a}",
            f"switch {t.b}",
            label=f"trunk ({t.bridge})" if t.via == "tap" else f"vxlan trunk (vni {t.vni})",
            taillabel=t.port_a,
            headlabel=t.port_b,
            penwidth="3",
            color="#1f4e99",
        )
    return g


def render(spec: LabSpec, fmt: str = "svg") -> bytes:
    """The lab drawn in fmt (svg, png, pdf) or its dot source (dot)."""
    if fmt not in FORMATS:
        raise GraphError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
    g = build(spec)
    if fmt == "dot":
        return g.source.encode()
    import graphviz

    try:
        return g.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise GraphError(
            "the graphviz program `dot` is not installed (apt-get install graphviz, or run "
            "scripts/setup)"
        ) from None
    except graphviz.CalledProcessError as exc:
        raise GraphError(f"graphviz failed: {exc.stderr.decode(errors='replace')}") from None
