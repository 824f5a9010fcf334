"""Storage commitment (Push Model) with a pynetdicom requester that receives the N-EVENT-REPORT."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import pydicom
from dimse_support import AE_TITLE, CORPUS, caller_has_nodelay, dcmtk, free_port, start_listener, stored
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt

from pixport.dimse.commitment import STORAGE_COMMITMENT_PUSH_MODEL

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"


def test_commitment_reports_only_stored_and_intact_instances(tmp_path: Path) -> None:
    port = free_port()
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    nodelay: list[bool] = []

    def on_report(event: Any) -> int:
        nodelay.append(caller_has_nodelay(event))
        reports.put((int(event.event_type), event.event_information))
        return 0x0000

    requester = AE(ae_title="REQUESTER")
    requester.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True)
    requester.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    server = requester.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        remotes = [{"ae_title": "REQUESTER", "host": "127.0.0.1", "port": port}]
        for node in start_listener(tmp_path, remotes=remotes):
            assert dcmtk("storescu", "-R", "-aec", AE_TITLE, "127.0.0.1", node.port, CT).returncode == 0
            ct = pydicom.dcmread(CT, stop_before_pixels=True)
            action = Dataset()
            action.TransactionUID = "2.25.1234567"
            action.ReferencedSOPSequence = []
            for sop_class, sop_instance in ((ct.SOPClassUID, ct.SOPInstanceUID), (ct.SOPClassUID, "1.2.3.4.999")):
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                action.ReferencedSOPSequence.append(item)
            assoc = requester.associate(
                "127.0.0.1",
                node.port,
                ae_title=AE_TITLE,
                ext_neg=[build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True)],
            )
            assert assoc.is_established
            status, _ = assoc.send_n_action(action, 1, STORAGE_COMMITMENT_PUSH_MODEL, "1.2.840.10008.1.20.1.1")
            assoc.release()
            assert status.Status == 0x0000
            event_type, info = reports.get(timeout=20)
            assert event_type == 2
            assert info.TransactionUID == "2.25.1234567"
            assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [ct.SOPInstanceUID]
            assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
                ("1.2.3.4.999", 0x0112)
            ]
            # A blob altered on disk is no longer committed.
            blob = node.archive.blobs.open(stored(node.archive, ct.SOPInstanceUID).digest)
            path = Path(blob.name)
            blob.close()
            path.chmod(0o644)
            path.write_bytes(path.read_bytes()[:-2] + b"\x00\x01")
            assoc = requester.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
            assoc.send_n_action(action, 1, STORAGE_COMMITMENT_PUSH_MODEL, "1.2.840.10008.1.20.1.1")
            assoc.release()
            event_type, info = reports.get(timeout=20)
            assert "ReferencedSOPSequence" not in info
            assert len(info.FailedSOPSequence) == 2
            # Each report came on an association PixPort opened, with TCP_NODELAY on its socket.
            assert nodelay == [True, True]
    finally:
        server.shutdown()
