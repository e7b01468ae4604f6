//! SHOW HELP: the command list, as a NOTICE.

use crate::admin::Reply;
use crate::app::App;

pub fn help(_: &App) -> Reply {
    Reply::Notice {
        message: "Console usage".into(),
        detail: "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
                 \tSHOW PEERS|PEER_POOLS\n\
                 \tSHOW SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n\
                 \tSHOW DNS_HOSTS|DNS_ZONES\n\
                 \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
                 \tSHOW LANES|WAITS|FINGERPRINTS\n\
                 \tSET key = arg\n\
                 \tRELOAD\n\
                 \tPAUSE [<db>]\n\
                 \tRESUME [<db>]\n\
                 \tDISABLE <db>\n\
                 \tENABLE <db>\n\
                 \tRECONNECT [<db>]\n\
                 \tKILL [<db>]\n\
                 \tKILL_CLIENT <client_id>\n\
                 \tSUSPEND\n\
                 \tSHUTDOWN\n\
                 \tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
                 \tWAIT_CLOSE [<db>]"
            .into(),
        tag: "SHOW",
    }
}
