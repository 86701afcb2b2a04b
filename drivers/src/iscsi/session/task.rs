//! SCSI tasks over iSCSI (RFC 7143 §3.2.4 command numbering, §10.4 data
//! transfer): issuing a command with immediate and unsolicited data, answering
//! R2Ts with Data-Out, collecting Data-In, completing on status.

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::iscsi::bhs::RESERVED_TAG;
use crate::iscsi::params::Negotiated;
use crate::iscsi::pdu::{DataIn, DataOut, Pdu, R2t, ScsiCommand, ScsiResponse};
use crate::scsi::{check_status, Command, DataDir};

/// Caller's handle for a submitted command, stable across reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

/// How a command ended at the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    /// SCSI status (SAM-5 §5.3.1).
    pub status: u8,
    /// Raw sense bytes (SPC-4 §4.5), empty if none.
    pub sense: Vec<u8>,
    /// Data-In received (truncated to what the target sent).
    pub data: Vec<u8>,
    /// Residual count, if the target reported an under- or overflow.
    pub residual: Option<u32>,
}

impl TaskResult {
    /// `Ok` for GOOD, else the typed SCSI error (MISCOMPARE distinct).
    pub fn check(&self) -> Result<()> {
        check_status(self.status, &self.sense)
    }
}

/// One command and where it stands.
#[derive(Debug)]
pub(super) struct Task {
    pub id: TaskId,
    pub lun: u64,
    pub cmd: Command,
    /// Set while issued on the current connection.
    pub itt: Option<u32>,
    pub deadline: u64,
    pub retries: u32,
    data_in: Vec<u8>,
    data_in_end: usize,
}

impl Task {
    pub fn new(id: TaskId, lun: u64, cmd: Command) -> Self {
        Task {
            id,
            lun,
            cmd,
            itt: None,
            deadline: 0,
            retries: 0,
            data_in: Vec::new(),
            data_in_end: 0,
        }
    }

    fn write_data(&self) -> &[u8] {
        match &self.cmd.dir {
            DataDir::Write(d) => d,
            _ => &[],
        }
    }

    /// The SCSI Command PDU and any unsolicited Data-Out PDUs
    /// (RFC 7143 §10.4.2-3: immediate data up to FirstBurstLength and the
    /// target's MaxRecvDataSegmentLength; unsolicited Data-Out only if
    /// InitialR2T=No).
    pub fn issue(
        &mut self,
        itt: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
        p: &Negotiated,
        out: &mut Vec<Pdu>,
    ) {
        self.itt = Some(itt);
        self.data_in.clear();
        self.data_in_end = 0;
        let (read, expected_len) = match &self.cmd.dir {
            DataDir::None => (false, 0),
            DataDir::Read(n) => (true, *n),
            DataDir::Write(d) => (false, d.len() as u32),
        };
        let data = self.write_data();
        let mss = p.max_send_data_segment_length as usize;
        let fb = p.first_burst_length as usize;
        let immediate = if p.immediate_data {
            data.len().min(fb).min(mss)
        } else {
            0
        };
        let unsolicited = if p.initial_r2t {
            immediate
        } else {
            data.len().min(fb)
        };
        out.push(Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: unsolicited == immediate,
            read,
            write: !data.is_empty(),
            attr: 1,
            lun: self.lun,
            itt,
            expected_len,
            cmd_sn,
            exp_stat_sn,
            cdb: self.cmd.cdb,
            data: data[..immediate].to_vec(),
        }));
        if unsolicited > immediate {
            data_out(
                self.lun,
                itt,
                RESERVED_TAG,
                exp_stat_sn,
                data,
                immediate,
                unsolicited,
                mss,
                out,
            );
        }
    }

    /// Answers an R2T (§11.8) with Data-Out PDUs covering its range.
    pub fn answer_r2t(
        &self,
        r2t: &R2t,
        exp_stat_sn: u32,
        p: &Negotiated,
        out: &mut Vec<Pdu>,
    ) -> Result<()> {
        let data = self.write_data();
        let start = r2t.buffer_offset as usize;
        let end = start
            .checked_add(r2t.desired_len as usize)
            .filter(|e| *e <= data.len())
            .ok_or(Error::Protocol("R2T beyond the command's data"))?;
        let mss = p.max_send_data_segment_length as usize;
        data_out(
            self.lun,
            r2t.itt,
            r2t.ttt,
            exp_stat_sn,
            data,
            start,
            end,
            mss,
            out,
        );
        Ok(())
    }

    /// Stores a Data-In segment; returns the result if it carried status.
    pub fn data_in(&mut self, d: &DataIn) -> Result<Option<TaskResult>> {
        let DataDir::Read(len) = self.cmd.dir else {
            return Err(Error::Protocol("Data-In for a command without read data"));
        };
        let start = d.buffer_offset as usize;
        let end = start
            .checked_add(d.data.len())
            .filter(|e| *e <= len as usize)
            .ok_or(Error::Protocol("Data-In beyond the expected length"))?;
        if self.data_in.len() < end {
            self.data_in.resize(end, 0);
        }
        self.data_in[start..end].copy_from_slice(&d.data);
        self.data_in_end = self.data_in_end.max(end);
        Ok(d.status.map(|status| TaskResult {
            status,
            sense: Vec::new(),
            data: core::mem::take(&mut self.data_in),
            residual: (d.overflow || d.underflow).then_some(d.residual),
        }))
    }

    /// Completes on a SCSI Response (§11.4).
    pub fn response(&mut self, r: &ScsiResponse) -> Result<TaskResult> {
        if r.response != 0 {
            return Err(Error::Protocol("target failure service response"));
        }
        Ok(TaskResult {
            status: r.status,
            sense: r.sense.clone(),
            data: core::mem::take(&mut self.data_in),
            residual: (r.overflow || r.underflow).then_some(r.residual),
        })
    }
}

/// Data-Out PDUs for `data[start..end]`, each at most `mss` bytes, DataSN
/// from 0, F on the last (§11.7.1, §11.7.4).
#[allow(clippy::too_many_arguments)]
fn data_out(
    lun: u64,
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    data: &[u8],
    start: usize,
    end: usize,
    mss: usize,
    out: &mut Vec<Pdu>,
) {
    let mut off = start;
    let mut sn = 0;
    while off < end {
        let n = (end - off).min(mss.max(1));
        out.push(Pdu::DataOut(DataOut {
            final_bit: off + n == end,
            lun,
            itt,
            ttt,
            exp_stat_sn,
            data_sn: sn,
            buffer_offset: off as u32,
            data: data[off..off + n].to_vec(),
        }));
        off += n;
        sn += 1;
    }
}
